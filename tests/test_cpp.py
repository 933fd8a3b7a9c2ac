"""The README's C++ example builds with the README's three lines of CMake
against lstm_ext's CMake package, the one pip installed (lstm_ext.get_cmake_dir())
and one installed by plain CMake without Python, and prints what the Python
binding computes (keeps the README, the package and the C++ API true)."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy_openblas32

import lstm_ext

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tools():
    missing = [t for t in ("cmake", "c++") if shutil.which(t) is None]
    if missing:
        pytest.skip(reason=f"no {', '.join(missing)} on PATH: cannot build the C++ example")


def run(*cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, " ".join(cmd) + "\n" + r.stdout[-4000:] + r.stderr[-4000:]
    return r.stdout


def build_readme_example(folder: Path, *cmake_args, prelude: str = "") -> float:
    """Configure, build and run the README's example; return the h[0] it prints.
    With a prelude, the README's CMake lines less find_package (the prelude
    makes lstm_ext::core)."""
    text = (ROOT / "README.md").read_text()
    folder.mkdir()
    (folder / "main.cpp").write_text(re.findall(r"```cpp\n(.*?)```", text, re.S)[0])
    cmake_block = re.findall(r"```cmake\n(.*?)```", text, re.S)[0]
    if prelude:
        cmake_block = prelude + re.sub(r"find_package\(lstm_ext[^\n]*\n", "", cmake_block)
    (folder / "CMakeLists.txt").write_text(
        "cmake_minimum_required(VERSION 3.18)\nproject(app CXX)\n" + cmake_block
    )
    build = folder / "build"
    run("cmake", "-S", str(folder), "-B", str(build), *cmake_args)
    run("cmake", "--build", str(build), "-j2")
    return float(run(str(build / "app")).split("=")[1])


def python_h00() -> float:
    x = np.full((10, 2, 3), 0.5, np.float32)
    W, R = np.full((16, 3), 0.1, np.float32), np.full((16, 4), 0.1, np.float32)
    return float(lstm_ext.forward(x, W, R, training=False).h[0, 0])


def test_readme_example_against_the_pip_installed_package(tools, tmp_path):
    cmake_dir = Path(lstm_ext.get_cmake_dir())
    assert (cmake_dir / "lstm_extConfig.cmake").is_file(), cmake_dir
    assert (Path(lstm_ext.get_include()) / "lstm_ext" / "lstm.h").is_file()
    for flag, want in (("--cmake-dir", str(cmake_dir)),
                       ("--cmake-prefix-path", lstm_ext.get_cmake_prefix_path())):  # fmt: skip
        out = subprocess.run([sys.executable, "-m", "lstm_ext", flag], capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert out.stdout.strip() == want
    printed = build_readme_example(tmp_path / "app", f"-Dlstm_ext_DIR={cmake_dir}")
    assert abs(printed - python_h00()) < 1e-6


def test_readme_example_where_openblas_is_installed_elsewhere(tools, tmp_path):
    """pip install --prefix (or --user) leaves scipy_openblas32 where it was:
    the package, here a copy of the installed one without the wheel beside it,
    then stops with a message that says what to pass (it had said only that
    OpenBLASConfig.cmake was not found), and builds with the README's
    CMAKE_PREFIX_PATH, the copy's folder and the wheel's."""
    copy = tmp_path / "prefix" / "lstm_ext"
    shutil.copytree(Path(lstm_ext.get_cmake_dir()).parents[2], copy, symlinks=True)
    app = tmp_path / "app"
    with pytest.raises(AssertionError) as e:
        build_readme_example(app, f"-Dlstm_ext_DIR={copy / 'share' / 'cmake' / 'lstm_ext'}")
    said = " ".join(str(e.value).split())  # CMake wraps the message's lines
    # Where the system has an OpenBLAS package (libopenblas-dev), the message
    # names it between the two parts.
    assert "the OpenBLAS CMake package it was built against, which is not beside it" in said
    assert ". Where pip put scipy-openblas32 in another folder" in said
    assert '-DCMAKE_PREFIX_PATH="$(python -m lstm_ext --cmake-prefix-path)"' in said
    shutil.rmtree(app)
    openblas_prefix = lstm_ext.get_cmake_prefix_path().split(";")[1]
    printed = build_readme_example(app, f"-DCMAKE_PREFIX_PATH={copy};{openblas_prefix}")
    assert abs(printed - python_h00()) < 1e-6


def test_an_openblas_without_the_wheels_prefix_is_refused_at_configure(tools, tmp_path):
    """The pip-installed core calls scipy_cblas_sgemm: an OpenBLAS package
    whose symbols have no prefix (a system libopenblas-dev, here one made over
    a library named libopenblas.so) is refused by find_package with a message
    that names it, not taken to fail at the link with undefined symbols (as
    on a machine with libopenblas-dev where the wheel was not beside lstm_ext)."""
    config = openblas_with_variables_only(tmp_path / "openblas", "system")
    copy = tmp_path / "prefix" / "lstm_ext"  # the package without the wheel beside it
    shutil.copytree(Path(lstm_ext.get_cmake_dir()).parents[2], copy, symlinks=True)
    with pytest.raises(AssertionError) as e:
        build_readme_example(
            tmp_path / "app", f"-Dlstm_ext_DIR={copy / 'share' / 'cmake' / 'lstm_ext'}",
            f"-DOpenBLAS_DIR={config}",
        )  # fmt: skip
    said = " ".join(str(e.value).split())
    assert f"it found only '{config}', whose symbols have the prefix '', not 'scipy_'" in said
    assert "Where pip put scipy-openblas32 in another folder" in said
    assert "undefined reference" not in said


def openblas_with_variables_only(root: Path, layout: str) -> Path:
    """An OpenBLAS CMake package, over the installed wheel's library and
    headers, that sets OpenBLAS_LIBRARIES and OpenBLAS_INCLUDE_DIRS and no
    target, as OpenBLAS's `make install`, Debian's libopenblas-dev and the
    scipy-openblas32 wheels before 0.3.34 write it. "make-install": the
    variables name the files; "wheel-0.3.28": they name /usr/local, where the
    wheels before 0.3.29 have no files; "system": they name libopenblas.so
    (the wheel's library under a system OpenBLAS's name, whose symbols would
    carry no prefix). Returns its OpenBLAS_DIR."""
    name = f"lib{scipy_openblas32.get_library()}.so"
    (root / "lib").mkdir(parents=True)
    for file in Path(scipy_openblas32.get_lib_dir()).iterdir():  # older wheels: libgfortran too
        if file.is_file():
            (root / "lib" / file.name).symlink_to(file)
    if layout == "system":
        (root / "lib" / "libopenblas.so").symlink_to(root / "lib" / name)
        name = "libopenblas.so"
    (root / "include").symlink_to(scipy_openblas32.get_include_dir())
    named = Path("/usr/local") if layout == "wheel-0.3.28" else root
    config = root / "lib" / "cmake" / "openblas"
    config.mkdir(parents=True)
    (config / "OpenBLASConfig.cmake").write_text(
        f'SET(OpenBLAS_VERSION "0.3.28")\n'
        f"SET(OpenBLAS_INCLUDE_DIRS {named / 'include'})\n"
        f"SET(OpenBLAS_LIBRARIES {named / 'lib' / name})\n"
    )
    return config


@pytest.mark.parametrize("layout", ["make-install", "wheel-0.3.28"])
def test_readme_example_against_the_pip_installed_package_and_an_openblas_without_target(
    tools, tmp_path, layout
):
    """lstm_extConfig.cmake makes OpenBLAS::OpenBLAS where OpenBLAS's package
    does not (it had failed: 'the target was not found')."""
    openblas = openblas_with_variables_only(tmp_path / "openblas", layout)
    printed = build_readme_example(
        tmp_path / "app", f"-Dlstm_ext_DIR={lstm_ext.get_cmake_dir()}", f"-DOpenBLAS_DIR={openblas}"
    )
    assert abs(printed - python_h00()) < 1e-6


def test_readme_example_against_a_plain_cmake_install(tools, tmp_path):
    """cmake -DLSTM_EXT_PYTHON=OFF, build, install to a prefix; the app finds it
    there, and the OpenBLAS it was built against, with no OpenBLAS_DIR of its
    own. That OpenBLAS's package sets variables only, as Debian's does, and its
    library is the wheel's, whose symbols' prefix the build finds by its name."""
    build, prefix = tmp_path / "build", tmp_path / "prefix"
    openblas = openblas_with_variables_only(tmp_path / "openblas", "make-install")
    run("cmake", "-S", str(ROOT), "-B", str(build), "-DLSTM_EXT_PYTHON=OFF",
        "-DLSTM_EXT_CUDA=OFF", f"-DOpenBLAS_DIR={openblas}")  # fmt: skip
    run("cmake", "--build", str(build), "-j2")
    run("cmake", "--install", str(build), "--prefix", str(prefix))
    assert (prefix / "include" / "lstm_ext" / "lstm.h").is_file()
    licence = prefix / "share" / "doc" / "lstm_ext" / "LICENSE"
    assert licence.read_text() == (ROOT / "LICENSE").read_text()
    printed = build_readme_example(tmp_path / "app", f"-DCMAKE_PREFIX_PATH={prefix}")
    assert abs(printed - python_h00()) < 1e-6


def test_readme_example_with_this_tree_as_a_subdirectory(tools, tmp_path):
    """add_subdirectory(<this tree>) in the app's own CMakeLists.txt, as the README says."""
    printed = build_readme_example(
        tmp_path / "app",
        f"-DLSTM_EXT_TREE={ROOT}",
        f"-DPython_EXECUTABLE={sys.executable}",
        prelude="set(LSTM_EXT_PYTHON OFF)\nset(LSTM_EXT_CUDA OFF)\n"
        "add_subdirectory(${LSTM_EXT_TREE} lstm_ext)\n",
    )
    assert abs(printed - python_h00()) < 1e-6


STRICT = ["-std=c++17", "-fsyntax-only", "-Werror", "-Wall", "-Wextra", "-Wpedantic", "-Wshadow",
          "-Wconversion", "-Wsign-conversion", "-Wold-style-cast",
          "-Wdouble-promotion"]  # fmt: skip


@pytest.mark.parametrize(
    "header", sorted(h.name for h in (Path(lstm_ext.get_include()) / "lstm_ext").glob("*.h"))
)
def test_the_installed_headers_compile_under_strict_warnings(tools, tmp_path, header):
    """An application that builds with -Werror and every conversion warning
    includes them alone (cell_math.h had warned under -Wsign-conversion)."""
    source = tmp_path / "app.cpp"
    source.write_text(f"#include <lstm_ext/{header}>\n")
    run("c++", *STRICT, f"-I{lstm_ext.get_include()}", str(source))


def test_configuring_the_source_tree_without_openblas_says_what_to_pass(tools, tmp_path):
    # Had been CMake's own "Could not find a package configuration file
    # provided by OpenBLAS", with no word of the Python it asked. (Any
    # OpenBLAS installed on this machine is kept out of the search.)
    def configure(*args):
        return subprocess.run(
            ["cmake", "-S", str(ROOT), "-B", str(tmp_path / "b"), "-DLSTM_EXT_PYTHON=OFF",
             "-DLSTM_EXT_CUDA=OFF", "-DCMAKE_DISABLE_FIND_PACKAGE_OpenBLAS=ON", *args],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip

    done = configure(f"-DOpenBLAS_DIR={tmp_path / 'none'}")
    said = " ".join(done.stderr.split())
    assert (
        done.returncode != 0
        and f"no OpenBLAS CMake package in OpenBLAS_DIR={tmp_path / 'none'}" in said
    )
    shutil.rmtree(tmp_path / "b")
    done = configure("-DPython_EXECUTABLE=/bin/false")  # a "Python" with no scipy-openblas32
    said = " ".join(done.stderr.split())
    assert (
        done.returncode != 0
        and "-DPython_EXECUTABLE=PATH" in said
        and "pip install scipy-openblas32" in said
    )
