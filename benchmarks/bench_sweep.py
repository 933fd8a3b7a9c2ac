"""Where lstm_ext is behind its peers: a grid of sizes against torch.nn.LSTM and onnxruntime.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python benchmarks/bench_sweep.py
        [--cases T,B,I,H ...] [--rounds 3] [--json PATH]

bench_lstm.py's table holds a few sizes and their targets; this script asks
the issue's other question, "ahead at every size?", over a grid (by default
T in 1, 10, 100, B in 1, 4, 16, 32, 64 and I = H in 64, 128, 256, 512,
float32). For each case, in --rounds rounds, ours and the peers in turns:
forward(training=False) against torch's forward (no_grad) and onnxruntime's
LSTM, and forward+backward against torch's. Each ratio is our time over the
peer's, the median of the rounds' own (below 1: ahead). A row whose worst
ratio is above 1 ends in "behind". Cells are timed as bench_lstm.py's (at
least 0.2 s of calls after a warm-up, the median call), so the host's state
moves single cells as much as it moves that table's; a "behind" that does not
repeat in a second run is the host. It needs torch or onnxruntime (the
`peers` extra); without both it says so and stops.
"""

import argparse
import itertools
import json
import statistics
import sys

import numpy as np
from bench_lstm import cpu_description, optional_import, problem, time_ort, time_ours, time_torch

import lstm_ext

STEPS, BATCHES, SIZES = (1, 10, 100), (1, 4, 16, 32, 64), (64, 128, 256, 512)
GRID = [(T, B, H, H) for T, B, H in itertools.product(STEPS, BATCHES, SIZES)]
ROW = "{:<16} {:>9} {:>9} {:>7} {:>9} {:>7} | {:>9} {:>9} {:>7}"
HEAD = ("case T,B,I,H", "fwd ms", "torch ms", "/torch", "ORT ms", "/ORT",
        "fwd+bwd ms", "torch ms", "/torch")  # fmt: skip


def case_of(text):
    try:
        case = tuple(int(v) for v in text.split(","))
    except ValueError:
        case = ()
    if len(case) != 4 or min(case) < 1:
        raise argparse.ArgumentTypeError(f"expected T,B,I,H, four positive integers, got {text!r}")
    return case


def one_round(p, torch, ort):
    """(ours fwd, ours fwd+bwd, torch fwd, torch fwd+bwd, onnxruntime fwd) ms,
    None for a peer not installed."""
    fwd, fwd_bwd = time_ours(p, 5)
    t_fwd, t_fwd_bwd = time_torch(torch, p, 5) if torch else (None, None)
    o_fwd = time_ort(ort, p, 5, None) if ort else None
    return fwd, fwd_bwd, t_fwd, t_fwd_bwd, o_fwd


def ratio(rounds, ours, theirs):
    """The median over rounds of ours' time over theirs, None without the peer."""
    if rounds[0][theirs] is None:
        return None
    return statistics.median(r[ours] / r[theirs] for r in rounds)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--cases", nargs="+", type=case_of, metavar="T,B,I,H", default=GRID)
    ap.add_argument("--rounds", type=int, default=3, help="rounds of a case, the peers in turns")
    ap.add_argument("--json", metavar="PATH", help="also write the results here")
    args = ap.parse_args(argv)
    if args.rounds < 1:
        ap.error(f"--rounds: expected at least 1, got {args.rounds}")
    torch, onnx, ort = (optional_import(m) for m in ("torch", "onnx", "onnxruntime"))
    if onnx is None:
        ort = None  # onnx builds the model onnxruntime runs
    if torch is None and ort is None:
        sys.exit("bench_sweep: neither torch nor onnxruntime (with onnx) is installed: nothing to "
                 "compare with (pip install 'lstm-ext[peers]')")  # fmt: skip

    print(f"# cpu: {cpu_description()}")
    versions = f"torch {torch and torch.__version__}; onnxruntime {ort and ort.__version__}"
    print(f"# lstm_ext {lstm_ext.__version__}, {lstm_ext.get_num_threads()} threads; {versions}")
    print(ROW.format(*HEAD))
    rng = np.random.default_rng(0)
    rows = []
    for case in args.cases:
        p = problem(rng, *case)
        rounds = [one_round(p, torch, ort) for _ in range(args.rounds)]
        med = [None if rounds[0][k] is None else statistics.median(r[k] for r in rounds)
               for k in range(5)]  # fmt: skip
        row = dict(case=case, fwd_ms=med[0], fwd_bwd_ms=med[1], torch_fwd_ms=med[2],
                   torch_fwd_bwd_ms=med[3], ort_fwd_ms=med[4], fwd_torch=ratio(rounds, 0, 2),
                   fwd_ort=ratio(rounds, 0, 4), fwd_bwd_torch=ratio(rounds, 1, 3),
                   rounds=[list(r) for r in rounds])  # fmt: skip
        worst = max(v for v in (row["fwd_torch"], row["fwd_ort"], row["fwd_bwd_torch"]) if v)
        row["behind"] = worst > 1
        rows.append(row)
        cell = lambda v, f="{:.3f}": "-" if v is None else f.format(v)  # noqa: E731
        cells = [cell(med[0]), cell(med[2]), cell(row["fwd_torch"], "{:.2f}"), cell(med[4]),
                 cell(row["fwd_ort"], "{:.2f}"), cell(med[1]), cell(med[3]),
                 cell(row["fwd_bwd_torch"], "{:.2f}")]  # fmt: skip
        line = ROW.format(",".join(map(str, case)), *cells)
        print(line + ("  behind" if row["behind"] else ""), flush=True)
    behind = [r["case"] for r in rows if r["behind"]]
    print(f"\n{len(behind)} of {len(rows)} cases behind a peer" + (f": {behind}" if behind else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(cpu=cpu_description(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
