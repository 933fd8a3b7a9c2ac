"""The CPU's two recurrent paths side by side: R packed (the hand-written
kernel) against a BLAS call per step, forward and forward+backward, float32.

    python benchmarks/bench_paths.py [T,B,I,H ...]

Both paths are timed in the same run, one case at a time, with NumPy's
2048^3 GEMM rate measured just before each case; /GEMM is the fraction of it
reached (forward 8*T*B*H*(I+H) FLOP, fwd+bwd three times that). Where the
CPU has no packed kernel (neither AVX-512F nor AVX2+FMA) only the BLAS path
is timed. dev/perf-notes.md quotes its output.
"""

import sys

import numpy as np
from bench_lstm import median_ms  # same folder

import lstm_ext
from lstm_ext import _core

CASES = [(100, 1, 128, 128), (100, 16, 256, 256), (100, 64, 512, 512), (50, 128, 1024, 1024)]


def gemm_rate():
    a = np.random.default_rng(1).standard_normal((2048, 2048), dtype=np.float32)
    return 2 * 2048**3 / (median_ms(lambda: a @ a, 5) / 1e3)


def main():
    cases = [tuple(map(int, c.split(","))) for c in sys.argv[1:]] or CASES
    rng = np.random.default_rng(0)
    before = _core.set_packed_recurrent(True)
    paths = [False, True] if _core.packed_recurrent_enabled() else [False]
    for T, B, I, H in cases:
        x = rng.standard_normal((T, B, I), dtype=np.float32)
        W = rng.standard_normal((4 * H, I), dtype=np.float32) * I**-0.5
        R = rng.standard_normal((4 * H, H), dtype=np.float32) * H**-0.5
        dy = np.ones((T, B, H), np.float32)
        repeat = 20 if B * H < 5000 else 5
        rate = gemm_rate()
        floor = 8 * T * B * H * (I + H) / rate
        cells = []
        for packed in paths:
            _core.set_packed_recurrent(packed)
            fwd = 1e-3 * median_ms(lambda a=(x, W, R): lstm_ext.forward(*a, training=False), repeat)
            both = 1e-3 * median_ms(
                lambda a=(x, W, R), dy=dy: lstm_ext.backward(lstm_ext.forward(*a).cache, dy), repeat
            )
            cells.append(
                f"{'packed' if packed else 'blas'}: fwd {fwd * 1e3:8.2f} ms ({floor / fwd:.2f})"
                f"  fwd+bwd {both * 1e3:8.2f} ms ({3 * floor / both:.2f})"
            )
        print(f"{T},{B},{I},{H} GEMM {rate / 1e9:.0f} GFLOP/s | " + " | ".join(cells), flush=True)
    _core.set_packed_recurrent(before)


if __name__ == "__main__":
    main()
