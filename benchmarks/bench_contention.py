#!/usr/bin/env python3
"""Calls in several processes at once, as when two jobs share a machine.

    python benchmarks/bench_contention.py [--case 100,1,128,128] [--mode inf]
        [--procs 2] [--seconds 3] [--json PATH]

A call's threads meet at every step of the sequence, so a call waits for any
of them the system has taken off its core; where other processes' threads
share the cores, lstm_ext halves its teams for a while (cpp/src/parallel.h,
TeamBackoff). Each process here loops over calls of one case for --seconds,
all starting together; printed per setting: each process's mean call (its
loop's time over its calls: a few very slow calls among fast ones move it,
not the median, which is printed beside it), over the mean call of one
process alone on all of lstm_ext's threads, and the backoffs each saw. The
settings: alone; --procs at once, all threads each; --procs at once, one
thread each (LSTM_EXT_NUM_THREADS=1, what a user who knew would set); and,
where torch is installed, torch.nn.LSTM (torch's default threads) alone and
at once. Nothing is compared
to a target: `dev/perf-notes.md`, 66, has the numbers this measured.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

import numpy as np

MODES = ("inf", "fwdbwd")
READY_S = 300  # for a worker's imports and first call (torch's import: seconds)


def worker(lib: str, case, mode: str, seconds: float) -> dict:
    """One process's loop, once its parent says go: median and mean call."""
    T, B, I, H = case
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I), dtype=np.float32)
    W = rng.standard_normal((4 * H, I), dtype=np.float32) * 0.1
    R = rng.standard_normal((4 * H, H), dtype=np.float32) * 0.1
    dy = rng.standard_normal((T, B, H), dtype=np.float32)
    if lib == "torch":
        import torch

        m = torch.nn.LSTM(I, H)
        xt, dyt = torch.from_numpy(x), torch.from_numpy(dy)

        def call():
            if mode == "inf":
                with torch.no_grad():
                    m(xt)
            else:
                m.zero_grad()
                m(xt)[0].backward(dyt)

        backoffs = lambda: 0  # noqa: E731
    else:
        import lstm_ext
        from lstm_ext import _core

        def call():
            if mode == "inf":
                lstm_ext.forward(x, W, R, training=False)
            else:
                lstm_ext.backward(lstm_ext.forward(x, W, R).cache, dy)

        backoffs = _core.team_backoffs
    call()
    print("ready", flush=True)
    sys.stdin.readline()
    times, end = [], time.perf_counter() + seconds
    while not times or time.perf_counter() < end:
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return dict(ms=1e3 * statistics.median(times), mean_ms=1e3 * sum(times) / len(times),
                calls=len(times), backoffs=backoffs())  # fmt: skip


def run(lib: str, case, mode: str, procs: int, seconds: float, threads: int | None) -> list:
    """procs processes at once (a fresh interpreter each); their results.
    Every child is killed on the way out, whatever happened."""
    env = dict(os.environ)
    env.pop("LSTM_EXT_NUM_THREADS", None)
    env.pop("OMP_NUM_THREADS", None)  # a cap on lstm_ext's threads and torch's: the settings'
    if threads:
        env["LSTM_EXT_NUM_THREADS"] = str(threads)
    args = [sys.executable, os.path.abspath(__file__), "--worker", lib, "--case",
            ",".join(map(str, case)), "--mode", mode, "--seconds", str(seconds)]  # fmt: skip
    children = []
    try:
        for _ in range(procs):
            children.append(subprocess.Popen(args, env=env, stdin=subprocess.PIPE,
                                              stdout=subprocess.PIPE, text=True))  # fmt: skip
        deadline = time.monotonic() + READY_S
        for c in children:  # each has imported and made its first call, or ended
            if not select.select([c.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise SystemExit(f"a {lib} worker was not ready within {READY_S} s")
            line = c.stdout.readline().strip()
            if line != "ready":  # it ended, or printed something else and waits for "go"
                raise SystemExit(f"a {lib} worker failed before its loop (status {c.poll()}, "
                                 f"said {line!r})")  # fmt: skip
        for c in children:
            c.stdin.write("go\n")
            c.stdin.flush()
        outs = [c.communicate(timeout=seconds + 120)[0] for c in children]
        if any(c.returncode for c in children):
            raise SystemExit(f"a {lib} worker failed: status {[c.returncode for c in children]}")
        return [json.loads(o) for o in outs]
    finally:
        for c in children:
            if c.poll() is None:
                c.kill()
                c.wait()


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", default="100,1,128,128", help="T,B,I,H")
    p.add_argument("--mode", default="inf", choices=MODES)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--json", help="write the results here")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    case = tuple(int(v) for v in a.case.split(","))
    if len(case) != 4 or min(case) < 1 or a.procs < 1 or a.seconds <= 0:
        p.error(f"--case T,B,I,H of positive sizes, --procs >= 1, --seconds > 0 (got {a})")
    if a.worker:
        print(json.dumps(worker(a.worker, case, a.mode, a.seconds)))
        return
    settings = [("lstm_ext", 1, None), ("lstm_ext", a.procs, None), ("lstm_ext", a.procs, 1)]
    try:
        import torch  # noqa: F401

        settings += [("torch", 1, None), ("torch", a.procs, None)]
    except ImportError:
        print("# torch not installed: its rows are left out")
    print(f"# case (T,B,I,H) = {case}, {a.mode}, {a.seconds} s a setting, {os.cpu_count()} CPUs")
    print(f"{'library':<9} {'procs':>5} {'threads':>8} {'mean (median) ms, each':>34} "
          f"{'/alone':>14} {'backoffs':>9}")  # fmt: skip
    rows, alone = [], {}
    for lib, procs, threads in settings:
        out = run(lib, case, a.mode, procs, a.seconds, threads)
        alone.setdefault(lib, out[0]["mean_ms"])
        ratios = [o["mean_ms"] / alone[lib] for o in out]
        rows.append(dict(library=lib, procs=procs, threads=threads or "default", results=out,
                         over_alone=ratios))  # fmt: skip
        ms = " ".join(f"{o['mean_ms']:.3f} ({o['ms']:.3f})" for o in out)
        over = " ".join(f"{r:.2f}" for r in ratios)
        backoffs = " ".join(str(o["backoffs"]) for o in out)
        print(f"{lib:<9} {procs:>5} {threads or 'default':>8} {ms:>34} {over:>14} {backoffs:>9}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(dict(case=case, mode=a.mode, seconds=a.seconds, rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
