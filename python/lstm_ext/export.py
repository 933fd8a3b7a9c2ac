"""Models for C++: ``save_model`` writes an ``nn.LSTM`` in the format that
``lstm_ext::Model::load`` reads (docs/model-format.md); ``load_model`` reads
it back, with the same checks as the C++ reader.

    from lstm_ext import export, nn
    lstm = nn.LSTM(8, 32, num_layers=2)
    ...                                   # train it
    export.save_model(lstm, "model.lstmx")

The format: little-endian; the magic ``LSTMEXT\\0``; u32 format version (1);
u32 dtype (4: float32, 8: float64); u32 input_size, hidden_size, num_layers,
proj_size, bidirectional, bias; u32 tensor count; then per tensor: u32 name
length, the name (ASCII, PyTorch's parameter names), u32 ndim, u64 dims, the
values (row-major). Nothing may follow the last tensor.
"""

from __future__ import annotations

import os
import struct
import tempfile
from pathlib import Path

import numpy as np

from . import _device, nn

MAGIC = b"LSTMEXT\0"
VERSION = 1


class FormatError(ValueError):
    """A model file that is truncated, malformed or inconsistent."""


def save_model(lstm: nn.LSTM, path) -> None:
    """Write ``lstm`` (its parameters in its dtype) to ``path``, atomically."""
    if not isinstance(lstm, nn.LSTM):
        raise TypeError(f"lstm: expected an lstm_ext.nn.LSTM, got {type(lstm).__name__}")
    head = struct.pack(
        "<8sIIIIIIIII", MAGIC, VERSION, lstm.dtype.itemsize, lstm.input_size,
        lstm.hidden_size, lstm.num_layers, lstm.proj_size, int(lstm.bidirectional),
        int(lstm.bias), len(lstm.params),
    )  # fmt: skip
    parts = [head]
    for name, p in lstm.params.items():
        a = np.ascontiguousarray(_device.host(p), dtype=lstm.dtype.newbyteorder("<"))
        raw = name.encode("ascii")
        parts.append(struct.pack(f"<I{len(raw)}sI", len(raw), raw, a.ndim))
        parts.append(struct.pack(f"<{a.ndim}Q", *a.shape))
        parts.append(a.tobytes())
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(b"".join(parts))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_model(path) -> nn.LSTM:
    """Read a model file into a new ``nn.LSTM`` (eval mode); FormatError if it is bad."""
    data = Path(path).read_bytes()
    pos = 0

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n > len(data) - pos:
            raise FormatError(
                f"{path}: truncated: {what} needs {n} bytes, {len(data) - pos} left (byte {pos})"
            )
        pos += n
        return data[pos - n : pos]

    def u32(what: str) -> int:
        return struct.unpack("<I", take(4, what))[0]

    if take(8, "the magic bytes") != MAGIC:
        raise FormatError(f"{path}: not a model file (no LSTMEXT magic at its start)")
    if (version := u32("the format version")) != VERSION:
        raise FormatError(f"{path}: format version {version}, this reader reads {VERSION}")
    dtype = {4: np.dtype("<f4"), 8: np.dtype("<f8")}.get(code := u32("the dtype"))
    if dtype is None:
        raise FormatError(f"{path}: dtype code {code} (expected 4 or 8)")
    cfg = {k: u32(k) for k in ("input_size", "hidden_size", "num_layers", "proj_size")}
    for k, (lo, hi) in nn.LSTM_LIMITS.items():
        if not lo <= cfg[k] <= hi:
            raise FormatError(f"{path}: {k} = {cfg[k]} is outside [{lo}, {hi}]")
    if cfg["proj_size"] >= cfg["hidden_size"]:
        raise FormatError(f"{path}: proj_size = {cfg['proj_size']} >= hidden_size")
    flags = {k: u32(k) for k in ("bidirectional", "bias")}
    if any(v not in (0, 1) for v in flags.values()):
        raise FormatError(f"{path}: bidirectional and bias must be 0 or 1, got {flags}")
    want = _shapes(cfg, bool(flags["bidirectional"]), bool(flags["bias"]))
    if (count := u32("the tensor count")) != len(want):
        raise FormatError(f"{path}: {count} tensors, expected {len(want)}")
    values = {}  # read (and their bytes checked) before the LSTM is built
    for _ in range(count):
        n = u32("a name's length")
        if not 1 <= n <= 64:
            raise FormatError(f"{path}: a name of {n} bytes (at most 64)")
        name = take(n, "a tensor name").decode("ascii", errors="replace")
        if name not in want or name in values:
            raise FormatError(f"{path}: unexpected or repeated tensor {name!r}")
        ndim = u32(f"{name!r} ndim")
        shape = struct.unpack(f"<{ndim}Q", take(8 * ndim, f"{name!r} shape")) if ndim < 8 else ()
        if shape != want[name]:
            raise FormatError(f"{path}: {name!r} has shape {shape}, expected {want[name]}")
        size = int(np.prod(shape)) * dtype.itemsize
        values[name] = np.frombuffer(take(size, f"{name!r} data"), dtype).reshape(shape)
    if pos != len(data):
        raise FormatError(f"{path}: {len(data) - pos} bytes after the last tensor")
    lstm = nn.LSTM(**cfg, bidirectional=bool(flags["bidirectional"]), bias=bool(flags["bias"]),
                   dtype=np.dtype(dtype.type))  # fmt: skip
    for name, v in values.items():
        lstm.params[name][...] = v
    return lstm.eval()


def _shapes(cfg: dict, bidirectional: bool, bias: bool) -> dict[str, tuple[int, ...]]:
    """nn.LSTM's parameter names and shapes, without building one (the file
    must prove it holds them first)."""
    H, P, D = cfg["hidden_size"], cfg["proj_size"], 2 if bidirectional else 1
    O = P or H
    shapes = {}
    for layer in range(cfg["num_layers"]):
        I = cfg["input_size"] if layer == 0 else D * O
        for s in [f"_l{layer}", f"_l{layer}_reverse"][:D]:
            shapes["weight_ih" + s] = (4 * H, I)
            shapes["weight_hh" + s] = (4 * H, O)
            if bias:
                shapes["bias_ih" + s] = shapes["bias_hh" + s] = (4 * H,)
            if P:
                shapes["weight_hr" + s] = (P, H)
    return shapes
