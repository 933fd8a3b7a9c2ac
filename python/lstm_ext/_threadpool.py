"""lstm_ext's threads under threadpoolctl, and its OpenBLAS's at import.

threadpoolctl (scikit-learn's, joblib's) sizes the thread pools of the native
libraries a process has loaded: ``threadpool_limits(1)`` puts every one of
them on one thread for a block of code, ``threadpool_info()`` lists them.
lstm_ext's pool is its own, not the BLAS's or OpenMP's, so it registers a
controller for it (user_api and internal_api "lstm_ext") when it is imported
where threadpoolctl 3.3 or later is installed (3.2 added ``register``; 3.3
checks the symbols that tell lstm_ext's ``_core`` file from other libraries
whose file names start alike). The controller calls two C functions of
``_core`` (bindings.cpp): the same pool as ``set_num_threads``. Listing it
starts no thread; a block with another count makes a new pool as it begins
and as it ends (0.24 ms a block from two threads to one and back, 0.32 from
four, on the two-core development VM).

Also here: ``blas_loads_on_one_thread``, around the import that loads
lstm_ext's OpenBLAS, so that it starts no threads of its own.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from collections.abc import Iterator

from ._version import __version__

_registered = False


@contextlib.contextmanager
def blas_loads_on_one_thread() -> Iterator[None]:
    """OPENBLAS_NUM_THREADS=1 while lstm_ext's OpenBLAS loads (the
    ``scipy_openblas32`` package's, which ``_core`` links; its import loads
    it), then the variable as it was. OpenBLAS starts its worker threads
    as it loads (one a core, less one), and they spin about 0.1 s before they
    sleep; the core sets that OpenBLAS to one thread on its first call, but
    the spinning workers had by then taken a core from the first calls of a
    script that computes right after the import: their threads, which meet at
    every step, waited, and their teams halved (`parallel.h`'s backoff) for
    up to a second (dev/perf-notes.md, 73). Only that OpenBLAS loads inside:
    NumPy's, imported before, keeps its threads, and one another package
    loaded before lstm_ext keeps them too. The variable is the process's:
    another thread, or a process it starts, sees the 1 during that import."""
    name = "OPENBLAS_NUM_THREADS"
    before = os.environ.get(name)
    os.environ[name] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def register() -> bool:
    """Registers lstm_ext's controller with threadpoolctl if it is installed
    (3.3 or later), once a process; says whether it is registered. Importing
    threadpoolctl takes about 5 ms; where it is not installed, nothing is
    imported. Any failure (a broken or shadowed threadpoolctl) registers
    nothing and never fails lstm_ext's import."""
    global _registered
    if _registered:
        return True
    try:
        if importlib.util.find_spec("threadpoolctl") is None:
            return False
        import threadpoolctl

        major, minor = (int(p) for p in threadpoolctl.__version__.split(".")[:2])
        if (major, minor) < (3, 3):  # (a shadowed module without register: the except)
            return False

        class LstmExtController(threadpoolctl.LibController):
            user_api = "lstm_ext"
            internal_api = "lstm_ext"
            filename_prefixes = ("_core",)
            check_symbols = ("lstm_ext_threadpool_get_num_threads",)

            def get_num_threads(self):
                return self.dynlib.lstm_ext_threadpool_get_num_threads()

            def set_num_threads(self, num_threads):
                return self.dynlib.lstm_ext_threadpool_set_num_threads(int(num_threads))

            def get_version(self):
                return __version__

        threadpoolctl.register(LstmExtController)
    except Exception:
        return False
    _registered = True
    return True
