"""Checks shared by the modules: integer arguments, saved state, and the
environment variables the core reads."""

from __future__ import annotations

import os
import re
import warnings

import numpy as np


def check_state_keys(state: dict, shapes: dict, what: str = "state", real: bool = False) -> None:
    """ValueError unless ``state`` has exactly the keys of ``shapes``, each
    with its shape (and, with ``real``, of real numbers); the message lists
    every missing, unexpected, mis-shaped and mistyped key at once."""
    missing = [k for k in shapes if k not in state]
    extra = [k for k in state if k not in shapes]
    wrong = [
        f"{k}: expected shape {tuple(shapes[k])}, got {np.shape(state[k])}"
        for k in shapes
        if k in state and np.shape(state[k]) != tuple(shapes[k])
    ]
    # Real numbers only: strings would fail late, None load as NaN, complex
    # values lose their imaginary part.
    wrong += [
        f"{k}: expected real numbers, got dtype {dt}"
        for k in shapes
        if real and k in state and (dt := dtype_of(state[k])).kind not in "fiu"
    ]
    if missing or extra or wrong:
        parts = [f"missing keys {missing}"] if missing else []
        parts += [f"unexpected keys {extra}"] if extra else []
        raise ValueError(f"{what}: " + "; ".join(parts + wrong))


def as_array(name: str, value, xp=np):
    """``xp.asarray(value)`` (NumPy's, or CuPy's), or a TypeError naming the
    argument and the cause where it makes no array of it (a ragged list, an
    ``__array__`` that raises), as the compiled functions' arguments say it
    (bind_args.h, ``arg``); NumPy's own message names no argument. A
    MemoryError, an interrupt, and CuPy's errors other than ValueError and
    TypeError (the device's) pass as they are."""
    try:
        return xp.asarray(value)
    except MemoryError:
        raise
    except Exception as e:
        if xp is not np and not isinstance(e, (ValueError, TypeError)):
            raise
        what = "a NumPy array" if xp is np else "an array"
        raise TypeError(
            f"{name}: expected {what}, got {type(value).__name__} ({type(e).__name__}: {e})"
        ) from e


def dtype_of(value) -> np.dtype:
    """The dtype of an array (NumPy's, or CuPy's, which is NumPy's too) or of
    what NumPy makes of anything else."""
    dt = getattr(value, "dtype", None)
    return dt if isinstance(dt, np.dtype) else np.asarray(value).dtype


def is_int(v) -> bool:
    """An integer, Python's or NumPy's, and not a bool."""
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def is_real(v) -> bool:
    """A real number (an integer or a float, Python's or NumPy's), not a bool."""
    return isinstance(v, (float, np.floating)) or is_int(v)


def same_dtype(dtype, want) -> bool:
    """``dtype`` is ``want`` in either byte order (NumPy computes with both)."""
    return np.dtype(dtype).newbyteorder("=") == np.dtype(want).newbyteorder("=")


def check_bool(name: str, v) -> bool:
    """``v`` as a bool, by the one rule of every flag (``_core``'s too,
    bind_args.h: flag): True or False, NumPy's bool, the integer 0 or 1, or
    None (False, as flags have always taken it); else a TypeError naming it
    (a string such as "no" is truthy: a flag given one had been taken as
    True)."""
    if v is None:
        return False
    if isinstance(v, (bool, np.bool_)) or (is_int(v) and int(v) in (0, 1)):
        return bool(v)
    raise TypeError(f"{name}: expected a bool, got {int(v) if is_int(v) else type(v).__name__}")


def check_int(name: str, v, low: int, high: int | None = None) -> int:
    """``v`` as a Python int in [low, high] (no upper bound where high is
    None), else a ValueError naming it. NumPy integers become ints (sizes kept
    as np.uint8 had wrapped 4*H around; np.int64 ones failed to save as
    JSON); bools, floats and strings are refused."""
    what = f"an integer in [{low}, {high}]" if high is not None else f"an integer >= {low}"
    if not is_int(v):
        raise ValueError(f"{name}: expected {what}, got {v!r}")
    if int(v) < low or (high is not None and int(v) > high):
        raise ValueError(f"{name}: expected {what}, got {int(v)}")
    return int(v)


def _integer_in(lo: int, hi: int):
    """Whether a string is what the core's strtol takes whole, in [lo, hi]."""
    whole = re.compile(r"[ \t\n\v\f\r]*[+-]?[0-9]+")  # C's isspace, ASCII digits
    return lambda v: whole.fullmatch(v) is not None and lo <= int(v) <= hi


# Each of lstm_ext's variables the core reads at run time: what it takes (as
# the C++ parses it: parallel.cpp, buffers.h, recurrent.cpp, lstm_cuda.cu),
# and what it does with anything else. (It reads OMP_NUM_THREADS too, a cap
# on the default thread count, but that one is OpenMP's and other libraries'
# to check: what they take, lstm_ext takes.)
_ENVIRONMENT = {
    "LSTM_EXT_NUM_THREADS": (
        _integer_in(1, 1024),
        "an integer in [1, 1024]",
        "the default thread count (the cores available)",
    ),
    "LSTM_EXT_BUFFER_CACHE_MB": (
        _integer_in(0, 2**40 - 1),
        "a whole number of megabytes (0 turns the cache off)",
        "the default, 1024",
    ),
    "LSTM_EXT_PACKED_RECURRENT": (
        lambda v: v in ("0", "1"),
        "'0' (the BLAS path) or '1'",
        "the packed kernel where the CPU has one",
    ),
    "LSTM_EXT_PACKED_KERNEL": (
        lambda v: v == "avx2",
        "'avx2'",
        "the CPU's own kernel",
    ),
    "LSTM_EXT_CUDA_BLOCKS": (
        _integer_in(1, 2**31 - 1),
        "a positive integer",
        "one block per multiprocessor",
    ),
}


def check_environment(environ=os.environ) -> list[str]:
    """A RuntimeWarning for each of lstm_ext's variables set to a value the
    core does not take (it ignores such a value silently: a typo would
    otherwise go unnoticed); returns the messages. Empty values count as
    unset."""
    messages = []
    for name, (valid, expected, instead) in _ENVIRONMENT.items():
        value = environ.get(name, "")
        if value and not valid(value):
            messages.append(f"{name}: expected {expected}, got {value!r}; ignored, using {instead}")
            warnings.warn(messages[-1], RuntimeWarning, stacklevel=3)
    return messages
