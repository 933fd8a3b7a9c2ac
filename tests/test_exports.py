"""What the compiled modules export to the process's dynamic symbol table.

Their entry points (PyInit_*, and _core's two C functions threadpoolctl
calls) and no lstm_ext:: C++ symbol: the core's stay inside each module (the
link's --exclude-libs), so that a module loaded with RTLD_GLOBAL
(sys.setdlopenflags, as some frameworks do) does not stand in for another
build's. (The std:: and pybind11 instantiations that libstdc++'s headers
make visible stay, as in any pybind11 module.) The _cuda module's are
checked where test_cuda_build builds it.
"""

import ctypes

import pytest

from helpers import exported_cpp_symbols
from lstm_ext import _core


def test_core_exports_no_lstm_ext_cpp_symbol():
    names = exported_cpp_symbols(_core.__file__)
    if names is None:
        pytest.skip(reason="no ELF symbol listing here (Linux and binutils' nm needed)")
    assert "PyInit__core" in names
    ours = [n for n in names if "lstm_ext::" in n]
    assert ours == [], ours[:10]


def test_the_threadpoolctl_entry_points_are_exported():
    lib = ctypes.CDLL(_core.__file__)
    assert lib.lstm_ext_threadpool_get_num_threads() >= 1
    assert hasattr(lib, "lstm_ext_threadpool_set_num_threads")
    # A core function by its mangled name (lstm_ext::team_backoffs()) is not.
    with pytest.raises(AttributeError):
        lib._ZN8lstm_ext13team_backoffsEv  # noqa: B018
