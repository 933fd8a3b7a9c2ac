"""The CUDA sources compile (CI has nvcc but no GPU, so a change that breaks
them fails here, not on the next GPU machine): a CMake build of the CUDA
library and the _cuda module for one architecture (sm_90), against the cuBLAS
headers of the nvidia-cublas wheel (the `cuda` extra; .ci/run installs it)
or LSTM_EXT_CUBLAS_ROOT.

Skips, saying why, where nvcc or cuBLAS is missing; under CI (CI=true) a
missing cuBLAS beside an nvcc fails instead, so the check cannot quietly stop
running.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import exported_cpp_symbols

ROOT = Path(__file__).resolve().parents[1]


def cublas_root():
    if os.environ.get("LSTM_EXT_CUBLAS_ROOT"):
        return os.environ["LSTM_EXT_CUBLAS_ROOT"]
    try:
        import nvidia.cu13 as m
    except ImportError:
        return None
    root = Path(next(iter(m.__path__)))
    return str(root) if (root / "include" / "cublas_v2.h").exists() else None


def test_cuda_sources_compile(tmp_path):
    missing = [t for t in ("cmake", "nvcc") if shutil.which(t) is None]
    if missing:
        pytest.skip(reason=f"no {', '.join(missing)} on PATH: cannot compile the CUDA path")
    root = cublas_root()
    if root is None:
        msg = "no cuBLAS headers (pip install nvidia-cublas, or set LSTM_EXT_CUBLAS_ROOT)"
        if os.environ.get("CI"):
            pytest.fail(msg + ": CI must compile the CUDA path")
        pytest.skip(reason=msg)
    try:
        import pybind11

        pybind = [f"-Dpybind11_DIR={pybind11.get_cmake_dir()}"]
        targets = ["lstm_ext_cuda", "_cuda"]
    except ImportError:  # the library alone
        pybind, targets = ["-DLSTM_EXT_PYTHON=OFF"], ["lstm_ext_cuda"]
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=900)  # noqa: E731
    r = run("cmake", "-S", str(ROOT), "-B", str(tmp_path), "-DLSTM_EXT_CUDA=ON",
            "-DLSTM_EXT_CUDA_ARCHITECTURES=90", f"-DLSTM_EXT_CUBLAS_ROOT={root}",
            f"-DPython_EXECUTABLE={sys.executable}", *pybind)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "CUDA path built" in r.stdout, r.stdout
    r = run("cmake", "--build", str(tmp_path), "-j2", "--target", *targets)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-5000:]
    assert "warning" not in r.stdout.lower(), r.stdout[-5000:]
    if "_cuda" in targets:  # it exports its entry point, not the core's symbols (test_exports)
        (module,) = tmp_path.glob("_cuda*.so")
        names = exported_cpp_symbols(module)
        if names is not None:
            assert "PyInit__cuda" in names
            assert [n for n in names if "lstm_ext::" in n] == []
