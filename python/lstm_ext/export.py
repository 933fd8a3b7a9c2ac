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

import struct
from pathlib import Path

import numpy as np

from . import _device, nn
from ._files import write_atomically

MAGIC = b"LSTMEXT\0"
VERSION = 1


class FormatError(ValueError):
    """A model file that is truncated, malformed or inconsistent."""


def save_model(lstm: nn.LSTM, path) -> None:
    """Write ``lstm`` (its parameters in its dtype) to ``path``, atomically
    (``_files.write_atomically``: flushed to disk, the permissions
    ``open(path, "wb")`` would give)."""
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
    write_atomically(path, b"".join(parts))


def load_model(path) -> nn.LSTM:
    """Read a model file into a new ``nn.LSTM`` (eval mode). A bad file raises
    FormatError: the path, the problem and the byte offset of the field at
    fault, in the C++ reader's words and at its offsets (it gives none for
    the magic, byte 0, and the version, byte 8)."""
    data = Path(path).read_bytes()
    pos = 0

    def fail(problem: str, at: int) -> FormatError:
        return FormatError(f"{path}: {problem} (byte {at})")

    def take(n: int, what: str) -> bytes:
        nonlocal pos
        if n > len(data) - pos:
            raise fail(f"truncated: {what} needs {n} bytes, {len(data) - pos} left", pos)
        pos += n
        return data[pos - n : pos]

    def u32(what: str) -> int:
        return struct.unpack("<I", take(4, what))[0]

    def checked(what: str, lo: int, hi: int, read_as: str | None = None) -> int:
        """The next u32, which must be in [lo, hi]; read_as: its name in a
        truncation's message, where that differs."""
        at = pos
        if not lo <= (v := u32(read_as or what)) <= hi:
            raise fail(f"{what} = {v} is outside [{lo}, {hi}]", at)
        return v

    if take(8, "the magic bytes") != MAGIC:
        raise fail("not a model file (no LSTMEXT magic at its start)", 0)
    if (version := u32("the format version")) != VERSION:
        raise fail(f"format version {version}, this reader reads version {VERSION}", 8)
    dtype = {4: np.dtype("<f4"), 8: np.dtype("<f8")}.get(code := u32("the dtype"))
    if dtype is None:
        raise fail(f"dtype code {code} (expected 4, float32, or 8, float64)", 12)
    cfg = {k: checked(k, *nn.LSTM_LIMITS[k]) for k in ("input_size", "hidden_size", "num_layers")}
    cfg["proj_size"] = checked("proj_size", 0, cfg["hidden_size"] - 1)
    flags = {k: checked(k, 0, 1) == 1 for k in ("bidirectional", "bias")}
    want = _shapes(cfg, **flags)
    at = pos
    if (count := u32("the tensor count")) != len(want):
        raise fail(f"{count} tensors, expected {len(want)} for this configuration", at)
    values = {}  # read (and their bytes checked) before the LSTM is built
    for _ in range(count):
        at = pos
        n = checked("name length", 1, 64, read_as="a name's length")
        name = take(n, "a tensor name").decode("latin-1")
        if name not in want:
            raise fail(f"unexpected tensor {_quoted(name)}", at)
        if name in values:
            raise fail(f"tensor {_quoted(name)} twice", at)
        at = pos
        if (ndim := u32(f"{name!r} ndim")) != len(want[name]):
            raise fail(f"{name!r} has {ndim} dimensions, expected {len(want[name])}", at)
        for i, expected in enumerate(want[name]):
            at = pos
            if (dim := struct.unpack("<Q", take(8, f"{name!r} shape"))[0]) != expected:
                raise fail(f"{name!r} dimension {i} is {dim}, expected {expected}", at)
        size = int(np.prod(want[name])) * dtype.itemsize
        values[name] = np.frombuffer(take(size, f"{name!r} data"), dtype).reshape(want[name])
    if pos != len(data):
        raise fail(f"{len(data) - pos} bytes after the last tensor", pos)
    lstm = nn.LSTM(**cfg, **flags, dtype=np.dtype(dtype.type))
    for name, v in values.items():
        lstm.params[name][...] = v
    return lstm.eval()


def _quoted(name: str) -> str:
    """A name from the file as a message quotes it, as the C++ reader does:
    printable ASCII as is, any other byte (latin-1 decoded) as \\xNN."""
    text = "".join(c if " " <= c <= "~" and c not in "\\'" else f"\\x{ord(c):02x}" for c in name)
    return f"'{text}'"


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
