"""What every input must do in every reader, shared by the fuzz harness
(tests/fuzz/fuzz_checkpoint.py) and the corpus replay
(tests/test_fuzz_corpus.py).

Each reader either loads the file or raises its documented error, a
ValueError with a message: ``checkpoint.load`` CheckpointError,
``export.load_model`` FormatError, the C++ reader (``_core._model_from_bytes``)
ValueError. Anything else propagates and is a bug: another exception, a
warning (raised as an error here, as pytest's settings do), an empty
message. The two .lstmx readers must agree on whether a file is valid and,
when it is, on its configuration. A model that loads runs one short forward
pass.
"""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import numpy as np

from lstm_ext import _core, checkpoint, export, nn


def _refused(e: ValueError, kind: type) -> None:
    if type(e) is not kind or not str(e):
        raise AssertionError(f"expected {kind.__name__} with a message, got {e!r}") from e


def forward_once(model: nn.Module) -> None:
    """One step of one sequence through model, sized from its first module.
    A Sequential whose modules do not chain (sizes or dtypes: a file may say
    anything, as a caller may build anything) raises a ValueError or
    TypeError here: that is the forward call's check, not a reader's bug."""
    first = model.modules[0] if isinstance(model, nn.Sequential) else model
    if isinstance(first, nn.Embedding):
        x = np.zeros((1, 1), np.int64)
    elif isinstance(first, nn.Linear):
        x = np.full((1, 1, first.in_features), 0.5, first.dtype)
    else:
        x = np.full((1, 1, first.input_size), 0.5, first.dtype)
    with warnings.catch_warnings(), np.errstate(all="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # inf/NaN weights are loadable
        try:
            model(x, keep_cache=False)
        except (ValueError, TypeError):
            if not isinstance(model, nn.Sequential):
                raise


def _load_strictly(load, path: Path, error):
    """load(path) with warnings as errors: its result, or None when it
    refuses with `error` (checked by _refused)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            return load(path)
    except error as e:
        _refused(e, error)
        return None


def check_checkpoint(path: Path):
    """checkpoint.load(path): the Checkpoint, or None when refused."""
    ck = _load_strictly(checkpoint.load, path, checkpoint.CheckpointError)
    if ck is not None:
        forward_once(ck.model)
    return ck


def check_lstmx(path: Path, data: bytes):
    """Both .lstmx readers over the same bytes: the Python LSTM, or None when
    both refused."""
    try:
        cpp = _core._model_from_bytes(data)
    except ValueError as e:
        _refused(e, ValueError)
        cpp = None
    lstm = _load_strictly(export.load_model, path, export.FormatError)
    if (cpp is None) != (lstm is None):
        raise AssertionError(f"the readers disagree: C++ {cpp}, Python {lstm and lstm.config()}")
    if lstm is not None:
        cfg = lstm.config()
        got = {k: cfg[k] for k in cpp}
        if got != cpp:
            raise AssertionError(f"the readers disagree: C++ {cpp}, Python {got}")
        forward_once(lstm)
    return lstm


def with_fixed_crcs(data: bytes) -> bytes:
    """data with the CRC-32 of each stored zip member recomputed from its
    bytes, where the zip's directory can be followed; else data unchanged.
    Lets the fuzzer's changes inside a member (the metadata's JSON, a .npy
    header, values) reach the reader past the CRC check. Idempotent."""
    out = bytearray(data)
    end = data.rfind(b"PK\x05\x06")
    if end < 0 or len(data) < end + 22:
        return data
    count, _, start = struct.unpack_from("<HII", data, end + 10)
    pos = start
    for _ in range(count):
        if data[pos : pos + 4] != b"PK\x01\x02" or len(data) < pos + 46:
            break
        method, _, _, _, csize, _, n, m, k = struct.unpack_from("<HHHIIIHHH", data, pos + 10)
        (local,) = struct.unpack_from("<I", data, pos + 42)
        if data[local : local + 4] == b"PK\x03\x04" and method == 0 and len(data) >= local + 30:
            ln, lm = struct.unpack_from("<HH", data, local + 26)
            body = data[local + 30 + ln + lm : local + 30 + ln + lm + csize]
            crc = struct.pack("<I", zlib.crc32(body))
            out[pos + 16 : pos + 20] = out[local + 14 : local + 18] = crc
        pos += 46 + n + m + k
    return bytes(out)


def check(path: Path, data: bytes) -> None:
    """Every reader over data (already written to path)."""
    check_checkpoint(path)
    check_lstmx(path, data)
