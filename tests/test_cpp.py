"""The README's C++ example builds against the source tree with CMake and
prints what the Python binding computes (keeps the README and the C++ API true)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import lstm_ext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tools():
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        pytest.skip(reason=f"no {', '.join(missing)} on PATH: cannot build the C++ example")


def test_readme_cpp_example(tools, tmp_path):
    text = (ROOT / "README.md").read_text()
    (tmp_path / "main.cpp").write_text(re.findall(r"```cpp\n(.*?)```", text, re.S)[0])
    cmake_block = re.findall(r"```cmake\n(.*?)```", text, re.S)[0]
    (tmp_path / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app CXX)\nadd_executable(app main.cpp)\n"
        + cmake_block.replace("add_subdirectory(lstm_ext)", f'add_subdirectory("{ROOT}" lstm_ext)')
    )
    build = tmp_path / "build"
    run = lambda *cmd: subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # noqa: E731
    r = run(
        "cmake",
        "-S",
        str(tmp_path),
        "-B",
        str(build),
        f"-DPython_EXECUTABLE={sys.executable}",
        "-DLSTM_EXT_CUDA=OFF",
    )  # the CPU example; test_cuda_build compiles the GPU path
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("cmake", "--build", str(build), "-j2")
    assert r.returncode == 0, r.stdout + r.stderr
    r = run(str(build / "app"))
    assert r.returncode == 0, r.stderr
    printed = float(r.stdout.split("=")[1])
    x = np.full((10, 2, 3), 0.5, np.float32)
    W, R = np.full((16, 3), 0.1, np.float32), np.full((16, 4), 0.1, np.float32)
    h = lstm_ext.forward(x, W, R, training=False).h
    assert abs(printed - h[0, 0]) < 1e-6, (r.stdout, h[0, 0])
