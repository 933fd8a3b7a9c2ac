"""lstm_ext's threads under threadpoolctl.

threadpoolctl (scikit-learn's, joblib's) sizes the thread pools of the native
libraries a process has loaded: ``threadpool_limits(1)`` puts every one of
them on one thread for a block of code, ``threadpool_info()`` lists them.
lstm_ext's pool is its own, not the BLAS's or OpenMP's, so it registers a
controller for it (user_api and internal_api "lstm_ext") when it is imported
where threadpoolctl 3.4 or later is installed (3.2 added ``register``; 3.4
checks the symbols that tell lstm_ext's ``_core`` file from other libraries
whose file names start alike). The controller calls two C functions of
``_core`` (bindings.cpp): the same pool as ``set_num_threads``.
"""

from __future__ import annotations

import importlib.util

from ._version import __version__


def register() -> bool:
    """Registers lstm_ext's controller with threadpoolctl if it is installed
    (3.4 or later); says whether it did. Importing threadpoolctl takes about
    5 ms; where it is not installed, nothing is imported."""
    try:  # a broken install of another package must not break lstm_ext's import
        if importlib.util.find_spec("threadpoolctl") is None:
            return False
        import threadpoolctl

        major, minor = (int(p) for p in threadpoolctl.__version__.split(".")[:2])
    except Exception:
        return False
    if (major, minor) < (3, 4) or not hasattr(threadpoolctl, "register"):
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
    return True
