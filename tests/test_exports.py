"""What the compiled modules export to the process's dynamic symbol table,
and what the package lists as its names.

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

import lstm_ext
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


def test_dir_lists_the_public_names_and_each_resolves():
    """dir(lstm_ext) (and tab completion) is ``__all__`` and the module's
    own dunder names, not the imports (np, NamedTuple, scipy_openblas32);
    the lazily loaded modules are in it,
    and every name in it resolves, those modules loaded on first use."""
    names = dir(lstm_ext)
    assert names == sorted(names) and set(lstm_ext.__all__) <= set(names)
    assert {"__file__", "__path__", "__doc__"} <= set(names)
    assert not [n for n in names if not n.startswith("__") and n not in lstm_ext.__all__], names
    assert {"np", "NamedTuple", "scipy_openblas32", "annotations"}.isdisjoint(dir(lstm_ext))
    assert {"optim", "losses", "reference", "nn"} <= set(dir(lstm_ext))
    for name in lstm_ext.__all__:
        assert getattr(lstm_ext, name) is not None, name
