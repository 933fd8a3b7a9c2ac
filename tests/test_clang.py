"""lstm_ext built by Clang: `_core` compiles without a warning, loads into a
process beside the installed build (pybind11 registers each module's types
as its own: a Clang build's had clashed, "type Cache is already registered",
and its `_cuda` then could not load beside `_core`), and computes the bits
the installed build computes, forward, backward and step, float32 and
float64, at 1 and 2 threads. Same bits because neither compiler may
contract into FMA (-ffp-contract=off) nor reorder a sum, and the kernels are
the same code (the fused passes for each ISA: GCC's target_clones, Clang's
own copies picked per call, lstm.cpp's on_cpu)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Runs in a child: the installed lstm_ext._core and the Clang one in one process.
COMPARE = r"""
import importlib.util, sys
import numpy as np
import lstm_ext._core as gcc

spec = importlib.util.spec_from_file_location("clang_build._core", sys.argv[1])
clang = importlib.util.module_from_spec(spec)
spec.loader.exec_module(clang)
print(clang.build_description())
assert clang.packed_recurrent_kernel() == gcc.packed_recurrent_kernel()

def calls(core, dtype, T, B, I, H):
    rng = np.random.default_rng(T * 1000 + B * 100 + H)
    x = rng.standard_normal((T, B, I)).astype(dtype)
    W = (rng.standard_normal((4 * H, I)) * I**-0.5).astype(dtype)
    R = (rng.standard_normal((4 * H, H)) * H**-0.5).astype(dtype)
    b = (rng.standard_normal(4 * H) * 0.1).astype(dtype)
    dy = rng.standard_normal((T, B, H)).astype(dtype)
    out = list(core.forward(x, W, R, b, training=False)[:3])
    fwd = core.forward(x, W, R, b, training=True)
    out += list(fwd[:3]) + [g for g in core.backward(fwd[3], dy) if g is not None]
    out += list(core.step(x[0], out[1], out[2], W, R, b))
    return out

n = 0
for threads in (1, 2):
    gcc.set_num_threads(threads)
    clang.set_num_threads(threads)
    for dtype in (np.float32, np.float64):
        for T, B, I, H in [(20, 1, 128, 128), (20, 3, 16, 96), (12, 16, 40, 64), (7, 33, 20, 24)]:
            for k, (a, b) in enumerate(zip(calls(gcc, dtype, T, B, I, H),
                                           calls(clang, dtype, T, B, I, H))):
                assert a.dtype == b.dtype and np.array_equal(a, b), (threads, dtype, T, B, I, H, k)
                n += 1
print(f"{n} arrays the same")
"""


def clang_cxx() -> str | None:
    for name in ["clang++"] + [f"clang++-{v}" for v in range(30, 13, -1)]:
        if shutil.which(name):
            return name
    return None


def test_a_clang_build_loads_beside_this_one_and_gives_the_same_bits(tmp_path):
    cxx = clang_cxx()
    missing = [t for t, found in (("cmake", shutil.which("cmake")), ("clang++", cxx)) if not found]
    if missing:
        msg = f"no {', '.join(missing)} on PATH: the Clang build is not checked"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must check it (.ci/run installs clang)")
        pytest.skip(reason=msg)
    pybind11 = pytest.importorskip("pybind11", reason="pybind11 (the test extra) builds _core")
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # noqa: E731
    r = run("cmake", "-S", str(ROOT), "-B", str(tmp_path), f"-DCMAKE_CXX_COMPILER={cxx}",
            "-DLSTM_EXT_CUDA=OFF", f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}")  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("cmake", "--build", str(tmp_path), "-j2", "--target", "_core")
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    assert "warning" not in (r.stdout + r.stderr).lower(), r.stdout[-5000:] + r.stderr[-5000:]
    (core,) = tmp_path.glob("_core*.so")
    r = run(sys.executable, "-c", COMPARE, str(core))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.startswith("clang ") and " , " not in r.stdout, r.stdout
    assert "224 arrays the same" in r.stdout  # 14 a case, r.stdout
