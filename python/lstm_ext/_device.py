"""Which compiled module runs a call: ``_core`` (CPU) or ``_cuda`` (GPU).

``device="cpu"`` always works. ``device="cuda"`` needs the CUDA path compiled
into this install (the extension module ``lstm_ext._cuda``, built where nvcc
and cuBLAS were found) and a visible GPU; where either is missing it raises
RuntimeError saying which. ``device="auto"`` takes the GPU where both are
there, else the CPU.
"""

from __future__ import annotations

import functools
import importlib.util
from types import ModuleType

from numpy import ndarray

from . import _core

DEVICES = ("auto", "cpu", "cuda")


@functools.cache
def _cuda_module() -> tuple[ModuleType | None, str]:
    """(the _cuda module or None, a line saying what was found or what is missing)."""
    if importlib.util.find_spec(f"{__package__}._cuda") is None:
        return None, "the CUDA path is not compiled into this install (no nvcc or cuBLAS at build)"
    try:
        from . import _cuda
    except ImportError as e:  # e.g. libcublas.so.13 missing: pip install lstm-ext[cuda]
        return None, (
            f"the CUDA path is compiled but cannot load ({e}); "
            "`pip install lstm-ext[cuda]` installs the cuBLAS it needs"
        )
    if _cuda.device_count() == 0:
        return None, f"the CUDA path is compiled, but it found {_cuda.describe()}"
    return _cuda, _cuda.describe()


def cuda_compiled() -> bool:
    """Whether this install has the CUDA path (lstm_ext._cuda)."""
    return importlib.util.find_spec(f"{__package__}._cuda") is not None


def cuda_available() -> bool:
    """Whether ``device="cuda"`` works here: the CUDA path is compiled and a GPU is visible."""
    return _cuda_module()[0] is not None


def cuda_status() -> str:
    """One line: the GPU found, or why ``device="cuda"`` cannot run here."""
    return _cuda_module()[1]


def check_device(device) -> str:
    """``device`` resolved to "cpu" or "cuda"; TypeError/ValueError/RuntimeError otherwise."""
    if not isinstance(device, str):
        raise TypeError(f"device: expected one of {DEVICES}, got {type(device).__name__}")
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if device == "cpu":
        return "cpu"
    mod, why = _cuda_module()
    if mod is None:
        if device == "cuda":
            raise RuntimeError(f"device='cuda': {why}")
        return "cpu"
    return "cuda"


def module(device: str) -> ModuleType:
    """The compiled module for a resolved device."""
    return _cuda_module()[0] if device == "cuda" else _core


def library_of(a) -> str | None:
    """ "cupy" or "torch" for their GPU arrays, "cuda" for any other object with
    ``__cuda_array_interface__``, None for host data."""
    if type(a) is ndarray:  # the common case, without the lookups below
        return None
    top = type(a).__module__.split(".")[0]
    if top == "torch":
        return "torch" if getattr(a, "is_cuda", False) else None
    if top == "cupy" and hasattr(a, "__cuda_array_interface__"):
        return "cupy"
    return "cuda" if hasattr(a, "__cuda_array_interface__") else None


_DLPACK_CUDA = 2  # kDLCUDA, DLPack's device type of CUDA memory


def from_dlpack(name: str, a):
    """A GPU array that speaks only DLPack (JAX, ...) as a CuPy (else PyTorch)
    array over the same memory; anything else unchanged."""
    if a is None or library_of(a) is not None or not hasattr(a, "__dlpack_device__"):
        return a
    if a.__dlpack_device__()[0] != _DLPACK_CUDA:
        return a
    for lib in ("cupy", "torch"):
        try:
            return importlib.import_module(lib).from_dlpack(a)
        except ImportError:
            continue
    raise TypeError(
        f"{name}: a GPU array ({type(a).__module__}.{type(a).__name__}) seen through DLPack; "
        "lstm_ext reads those through CuPy or PyTorch, and neither is installed"
    )


def to_gpu_args(names, values, device: str) -> list:
    """The arguments as the GPU module takes them: DLPack-only GPU arrays seen
    as CuPy (or PyTorch) arrays, CuPy and PyTorch GPU arrays made C-contiguous
    (a copy only where they are not) and detached from autograd; host arrays
    as they are. On the CPU a GPU array is a TypeError."""
    out = []
    for name, a in zip(names, values, strict=True):
        if a is None or type(a) is ndarray:  # host data: as it is (4.5 of 7 µs of a small forward)
            out.append(a)
            continue
        a = from_dlpack(name, a)
        lib = None if a is None else library_of(a)
        if lib is not None and device == "cpu":
            raise TypeError(
                f"{name}: a GPU array ({type(a).__module__}.{type(a).__name__}) on device='cpu'; "
                "pass device='cuda' (or 'auto'), or a NumPy array"
            )
        if lib == "cupy":
            import cupy

            a = cupy.ascontiguousarray(a)
        elif lib == "torch":
            a = a.detach().contiguous()
        out.append(a)
    return out


def as_library(result, lib: str | None):
    """A GPU result (a _cuda.DeviceArray) as an array of `lib` ("cupy",
    "torch"), without a copy; anything else unchanged."""
    if result is None or lib not in ("cupy", "torch") or not hasattr(result, "get"):
        return result
    if lib == "cupy":
        import cupy

        return cupy.asarray(result)
    import torch

    return torch.as_tensor(result, device="cuda")


# ---- parameters that live on the GPU (nn.LSTM(device="cuda") with CuPy) ----


def array_module(a) -> ModuleType:
    """cupy for a CuPy array, else numpy: what computes on ``a`` where it is."""
    if library_of(a) == "cupy":
        return importlib.import_module("cupy")
    import numpy

    return numpy


def host(a):
    """A NumPy array: a copy of a CuPy array, ``a`` itself otherwise."""
    return a.get() if library_of(a) == "cupy" else a


def assign(dst, value) -> None:
    """dst[...] = value, in place, for a NumPy or CuPy dst and a host value."""
    import numpy

    value = numpy.asarray(host(value), dtype=dst.dtype)
    if library_of(dst) == "cupy":
        dst.set(numpy.ascontiguousarray(value))
    else:
        dst[...] = value


def gpu_params_module() -> ModuleType | None:
    """cupy, where it is installed and sees the GPU, for nn.LSTM(device="cuda")
    to keep its parameters and gradients there; else None."""
    try:
        cupy = importlib.import_module("cupy")
        return cupy if cupy.cuda.runtime.getDeviceCount() > 0 else None
    except Exception:  # not installed, or no usable GPU
        return None


def module_of_cache(cache) -> ModuleType:
    """The module whose forward made ``cache`` (backward runs where forward ran)."""
    mod = _cuda_module()[0]
    if mod is not None and isinstance(cache, mod.Cache):
        return mod
    return _core
