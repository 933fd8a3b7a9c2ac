#!/usr/bin/env python3
"""forward and PackedLayer.forward with weight_dtype="bfloat16" against
float32, timed in turns in one process.

    python dev/bf16_turns.py [--pairs 15] [--block-ms 40]

For each case, blocks of about --block-ms of float32 calls and of bfloat16
calls alternate; each pair of blocks gives a ratio (bfloat16 over float32),
and the line shows both medians a call and the median ratio with its
quartiles. In turns because the development VM's speed moves by up to 70 %
within minutes (dev/perf-notes.md, 47); bench_lstm.py's bfloat16 rows take
three rounds per case instead.
"""

import argparse
import statistics
import time

import numpy as np

import lstm_ext

CASES = [(100, 1, 128, 128), (100, 1, 256, 256), (100, 1, 512, 512), (100, 4, 512, 512),
         (100, 16, 256, 256), (100, 64, 512, 512)]  # fmt: skip


def block_ms(f, ms):
    """Milliseconds a call of f, over calls for about ms."""
    n, t0 = 0, time.perf_counter()
    while True:
        f()
        n += 1
        t = time.perf_counter() - t0
        if t * 1e3 >= ms:
            return t / n * 1e3


def in_turns(a, b, pairs, ms):
    a(), b()
    r = [(block_ms(a, ms), block_ms(b, ms)) for _ in range(pairs)]
    ratios = [y / x for x, y in r]
    q = statistics.quantiles(ratios, n=4)
    return statistics.median(x for x, _ in r), statistics.median(y for _, y in r), q


def time_case(T, B, I, H, rng, pairs, ms):
    """One line: forward's and PackedLayer's float32 and bfloat16 times."""
    x = rng.standard_normal((T, B, I)).astype(np.float32)
    W = (0.1 * rng.standard_normal((4 * H, I))).astype(np.float32)
    R = (0.1 * rng.standard_normal((4 * H, H))).astype(np.float32)
    p32 = lstm_ext.PackedLayer(W, R)
    p16 = lstm_ext.PackedLayer(W, R, weight_dtype="bfloat16")
    calls = {
        "forward": (lambda: lstm_ext.forward(x, W, R, training=False),
                    lambda: lstm_ext.forward(x, W, R, training=False, weight_dtype="bfloat16")),
        "PackedLayer": (lambda: p32.forward(x), lambda: p16.forward(x)),
    }  # fmt: skip
    cells = []
    for name, (f32, b16) in calls.items():
        a, b, q = in_turns(f32, b16, pairs, ms)
        cells.append(f"{name} {a:.3f} / {b:.3f} ms, {q[1]:.2f} ({q[0]:.2f}-{q[2]:.2f})")
    return f"({T},{B},{I},{H}) float32 / bfloat16: " + "; ".join(cells)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pairs", type=int, default=15)
    ap.add_argument("--block-ms", type=float, default=40)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    for case in CASES:
        print(time_case(*case, rng, args.pairs, args.block_ms), flush=True)


if __name__ == "__main__":
    main()
