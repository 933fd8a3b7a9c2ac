"""A process's first calls against its next ones (dev/perf-notes.md, 73).

Each process imports lstm_ext, makes the data, times N inference calls at
once, then N more, and prints the two times, their ratio and the team
backoffs. In turns: processes whose OpenBLAS loads as lstm_ext loads it
(on one thread), and processes that import ``scipy_openblas32`` between
NumPy and lstm_ext, so that it loads with its worker threads as lstm_ext's
own import loaded it before 2026-12-03 (they spin about 0.1 s).

    python dev/first_calls.py [--shape T B I H] [--calls N] [--pairs P]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys

CHILD = """
import sys, time
import numpy as np
if sys.argv[1] == "workers":
    import scipy_openblas32  # lstm_ext's OpenBLAS loads first, with its workers
import lstm_ext
from lstm_ext import _core

T, B, I, H, N = map(int, sys.argv[2:7])
rng = np.random.default_rng(0)
x = rng.standard_normal((T, B, I), dtype=np.float32)
W = (0.05 * rng.standard_normal((4 * H, I))).astype(np.float32)
R = (0.05 * rng.standard_normal((4 * H, H))).astype(np.float32)
b = np.zeros(4 * H, np.float32)
h0 = np.zeros((B, H), np.float32)
times = []
for _ in range(2):
    t0 = time.perf_counter()
    for _ in range(N):
        lstm_ext.forward(x, W, R, b, h0, h0, training=False)
    times.append(1e3 * (time.perf_counter() - t0))
print(times[0], times[1], _core.team_backoffs())
"""


def run(how: str, shape: list[int], calls: int) -> tuple[float, float, int]:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, how, *map(str, shape), str(calls)],
        capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    return float(out[0]), float(out[1]), int(out[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", type=int, nargs=4, default=[100, 1, 128, 128], metavar="N")
    ap.add_argument("--calls", type=int, default=200)
    ap.add_argument("--pairs", type=int, default=6)
    args = ap.parse_args()
    ratios: dict[str, list[float]] = {"one thread": [], "workers": []}
    for _ in range(args.pairs):
        for how in ratios:
            first, nxt, backoffs = run(how, args.shape, args.calls)
            ratios[how].append(first / nxt)
            print(f"{how:10s}  first {first:8.1f} ms  next {nxt:8.1f} ms  "
                  f"ratio {first / nxt:.2f}  backoffs {backoffs}", flush=True)  # fmt: skip
    for how, r in ratios.items():
        print(f"{how}: first/next median {statistics.median(r):.2f} "
              f"({min(r):.2f}-{max(r):.2f})")  # fmt: skip


if __name__ == "__main__":
    main()
