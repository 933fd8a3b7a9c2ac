#!/usr/bin/env python3
"""Two builds of lstm_ext's core timed in one process, in turns.

    python dev/ab.py A B [--case T,B,I,H] [--mode inf,train,fwdbwd,step]
                         [--dtype float32] [--blocks 20] [--block-ms 40] [--gap-us 0]

A and B are each a git revision (built here, once, into $LSTM_EXT_AB_DIR,
default /tmp/lstm_ext_ab/<commit>, with $LSTM_EXT_AB_CXXFLAGS as CMake's
CMAKE_CXX_FLAGS if set, e.g. -falign-loops=64) or a folder holding a build,
as `pip install --no-build-isolation --no-deps --target DIR .` leaves it
(the current environment needs the build requirements: scikit-build-core,
pybind11). Both `_core` modules are loaded side by side; each block times one
build's calls for about --block-ms, the other's block follows, and every pair
of blocks gives a ratio B/A. Printed per mode: each build's median time a call
and the median of the ratios with its quartiles.

Why: on the shared development VM the same build's median moves by up to 70 %
within minutes (dev/perf-notes.md, "Back on the AMD machine"), so timings of
two builds taken one after the other compare the host's states, not the code.
In turns, a few tens of milliseconds apart, both see the same state; an A/A
run (the same build twice) gives the method's own spread (perf-notes, 47).
Where the builds' hot loops fall moves the kernel by a few per cent on its
own (perf-notes, 48): for effects that small, build both with
LSTM_EXT_AB_CXXFLAGS=-falign-loops=64.

--gap-us G spins G microseconds before each call, untimed: calls spaced out
as by a program's own work between them (text generated a character a call),
where the pool's threads have gone to sleep and a call pays their wake-up.
"""

from __future__ import annotations

import argparse
import atexit
import glob
import importlib.util
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import scipy_openblas32  # noqa: F401  (loads libscipy_openblas, which _core links)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("inf", "train", "fwdbwd", "step")


def build(rev: str) -> str:
    """The folder of a build of git revision `rev`, made on first use."""
    sha = subprocess.run(
        ["git", "-C", ROOT, "rev-parse", "--verify", rev + "^{commit}"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    base = os.environ.get("LSTM_EXT_AB_DIR", os.path.join(tempfile.gettempdir(), "lstm_ext_ab"))
    flags = os.environ.get("LSTM_EXT_AB_CXXFLAGS", "")
    tag = sha[:12] + ("-" + "".join(c if c.isalnum() else "_" for c in flags) if flags else "")
    target = os.path.join(base, tag)
    if glob.glob(os.path.join(target, "lstm_ext", "_core*.so")):
        return target
    src = os.path.join(base, "src-" + sha[:12])  # the same sources whatever the flags
    os.makedirs(src, exist_ok=True)
    archive = subprocess.run(["git", "-C", ROOT, "archive", sha], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", src], input=archive.stdout, check=True)
    print(f"building {rev} ({tag}) into {target} ...", file=sys.stderr, flush=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-build-isolation", "--no-deps",
         "--target", target, "-C", f"build-dir={os.path.join(base, 'build-' + tag)}",
         "-C", "cmake.define.LSTM_EXT_CUDA=OFF", "-C", f"cmake.define.CMAKE_CXX_FLAGS={flags}",
         src],
        check=True,
    )  # fmt: skip
    return target


def core_file(where: str) -> str:
    """The `_core` library of a build folder (or of a revision, built first)."""
    folder = where if os.path.isdir(os.path.join(where, "lstm_ext")) else build(where)
    found = glob.glob(os.path.join(folder, "lstm_ext", "_core*.so"))
    if not found:
        raise SystemExit(f"{where}: no lstm_ext/_core*.so in {folder}")
    return os.path.realpath(found[0])


def load_core(path: str, tag: str):
    """The module in the library `path`, as a module of its own.

    Under a name of its own: CPython keeps one module per extension name (a
    second "_core" is the first one again, whatever its file). From a file of
    its own: the same file loaded twice shares its statics, and pybind11
    refuses to register its types twice (an A/A run copies B's file)."""
    spec = importlib.util.spec_from_file_location(f"lstm_ext_ab_{tag.lower()}._core", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    print(f"{tag}: {path} (packed kernel: {module.packed_recurrent_kernel()})")
    return module


def calls(core, mode: str, T: int, B: int, I: int, H: int, dtype=np.float32):
    """A function making one call of `mode` through `core`, on fixed inputs."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    W = (rng.standard_normal((4 * H, I)) * I**-0.5).astype(dtype)
    R = (rng.standard_normal((4 * H, H)) * H**-0.5).astype(dtype)
    b = np.zeros(4 * H, dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    h = np.zeros((B, H), dtype)
    c = np.zeros((B, H), dtype)
    if mode == "inf":
        return lambda: core.forward(x, W, R, b, training=False)
    if mode == "train":
        return lambda: core.forward(x, W, R, b, training=True)
    if mode == "fwdbwd":
        return lambda: core.backward(core.forward(x, W, R, b, training=True)[3], dy)
    return lambda: core.step(x[0], h, c, W, R, b)


def per_call_s(fn, n: int, gap_s: float = 0.0) -> float:
    """Seconds a call of n, each after a gap_s spin (not counted) if gap_s."""
    if not gap_s:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) / n
    total = 0.0
    for _ in range(n):
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < gap_s:
            pass
        t0 = time.perf_counter()
        fn()
        total += time.perf_counter() - t0
    return total / n


def compare(fns, blocks: int, block_ms: float, gap_s: float = 0.0):
    """Per-call seconds of both functions, block by block in turns."""
    for fn in fns:  # warm: buffers, packed weights' first touch, the pool's threads
        per_call_s(fn, 2)
    n = max(1, round(block_ms / 1e3 / (gap_s + min(per_call_s(fn, 3) for fn in fns))))
    times: tuple[list[float], list[float]] = ([], [])
    for _ in range(blocks):
        for k, fn in enumerate(fns):
            fn()
            times[k].append(per_call_s(fn, n, gap_s))
    return times


def quartiles(v: list[float]) -> tuple[float, float, float]:
    q = statistics.quantiles(v, n=4)
    return q[0], statistics.median(v), q[2]


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("a", help="build A: a git revision or a build folder")
    p.add_argument("b", help="build B: a git revision or a build folder")
    p.add_argument("--case", default="100,16,256,256", help="T,B,I,H (step: B,I,H of it)")
    p.add_argument("--mode", default="inf,fwdbwd", help=f"comma-separated, of {', '.join(MODES)}")
    p.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    p.add_argument("--blocks", type=int, default=20, help="blocks of each build (>= 4)")
    p.add_argument("--block-ms", type=float, default=40.0, help="about how long a block runs")
    p.add_argument("--gap-us", type=float, default=0.0, help="untimed spin before each call")
    args = p.parse_args(argv)
    T, B, I, H = (int(v) for v in args.case.split(","))
    modes = args.mode.split(",")
    bad = [m for m in modes if m not in MODES]
    if bad or args.blocks < 4 or args.block_ms <= 0 or args.gap_us < 0:
        p.error(f"--mode of {MODES}, --blocks >= 4, --block-ms > 0, --gap-us >= 0 (got {args})")
    paths = [core_file(args.a), core_file(args.b)]
    if paths[0] == paths[1]:
        folder = tempfile.mkdtemp(prefix="lstm_ext_ab_")
        atexit.register(shutil.rmtree, folder, ignore_errors=True)  # a loaded library may go
        paths[1] = os.path.join(folder, os.path.basename(paths[1]))
        shutil.copyfile(paths[0], paths[1])
    cores = (load_core(paths[0], "A"), load_core(paths[1], "B"))
    gap = f", {args.gap_us:g} us between calls" if args.gap_us else ""
    print(
        f"case (T,B,I,H) = ({T},{B},{I},{H}), {args.dtype}, {args.blocks} blocks of "
        f"~{args.block_ms:g} ms each{gap}"
    )
    for mode in modes:
        fns = [calls(core, mode, T, B, I, H, np.dtype(args.dtype)) for core in cores]
        ta, tb = compare(fns, args.blocks, args.block_ms, args.gap_us * 1e-6)
        lo, mid, hi = quartiles([q / r for r, q in zip(ta, tb, strict=True)])
        a_us, b_us = (1e6 * statistics.median(t) for t in (ta, tb))
        print(
            f"{mode:>7}: A {a_us:10.1f} us  B {b_us:10.1f} us  B/A {mid:.3f} "
            f"(quartiles {lo:.3f}-{hi:.3f})",
            flush=True,
        )


if __name__ == "__main__":
    main()
