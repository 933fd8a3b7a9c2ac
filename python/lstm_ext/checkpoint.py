"""Checkpoints: a model, its optimiser's state and metadata in one ``.npz``.

The file is a NumPy ``.npz`` (a zip of ``.npy`` arrays) read with
``allow_pickle=False``: loading runs no code, so a checkpoint from a stranger
is safe to open. It holds

- ``param/<name>``: every parameter, by the model's names;
- ``optim/<key>``: the optimiser's ``state_dict()`` (arrays only);
- ``extra/<name>``: the caller's arrays (``save``'s ``arrays``: say, a
  training history, which would grow the JSON with every step);
- ``__meta__``: UTF-8 JSON as a uint8 array: the format tag, the lstm_ext
  version, the model's ``config()`` (its layer sizes and dtype), the random
  generator states of modules that draw (dropout), and the caller's metadata.

Saving is atomic (``_files.write_atomically``): the file is written beside
the target under a temporary name, flushed to disk and renamed over it, so a
crash mid-save leaves the previous checkpoint intact; the file gets the
permissions ``open(path, "wb")`` would give it. A missing, truncated,
corrupt or mismatched file raises ``CheckpointError`` (a ValueError) that
says which and why.

Loading trusts nothing in the file: it reads only uncompressed members (as
``save`` writes them) that are ``.npy`` arrays whose bytes hold what their
headers declare, and builds the model only when the parameters its
configuration declares are about as many as the file holds, so that memory
stays within a small multiple of the file's size: a small file cannot ask
for a huge model.
"""

from __future__ import annotations

import json
import math
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _device, nn
from ._files import write_atomically
from ._version import __version__

FORMAT = "lstm_ext.checkpoint/1"
_SPARE_PARAMETERS = 4096  # declared beyond twice what the file holds: refused


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit what was asked for."""


@dataclass(repr=False)
class Checkpoint:
    model: nn.Module
    optimizer_state: dict = field(default_factory=dict)  # for optimizer.load_state_dict
    meta: dict = field(default_factory=dict)  # what the caller saved
    version: str = ""  # lstm_ext version that wrote it
    arrays: dict = field(default_factory=dict)  # the caller's arrays, by name

    def __repr__(self) -> str:
        """The model, and the sizes of the rest (the optimiser's moments and a
        vocabulary in full ran to tens of thousands of characters)."""
        values = sum(np.size(v) for v in self.optimizer_state.values())
        meta = self.meta  # a JSON value: a dict as save writes it, or anything
        meta = f"keys {sorted(meta)}" if isinstance(meta, dict) else type(meta).__name__
        return (
            f"Checkpoint(model={self.model!r}, optimizer_state=<{len(self.optimizer_state)} "
            f"arrays, {values} values>, meta=<{meta}>, version={self.version!r}, "
            f"arrays=<{len(self.arrays)}>)"
        )


def _rng_states(model: nn.Module) -> dict:
    mods = model.modules if isinstance(model, nn.Sequential) else [model]
    return {str(k): m._rng.bit_generator.state for k, m in enumerate(mods) if hasattr(m, "_rng")}


def _set_rng_states(model: nn.Module, states: dict) -> None:
    mods = model.modules if isinstance(model, nn.Sequential) else [model]
    if not isinstance(states, dict):
        raise TypeError(f"rng: expected a dict by module index, got {type(states).__name__}")
    for k, state in states.items():
        if not (k.isdigit() and int(k) < len(mods) and hasattr(mods[int(k)], "_rng")):
            raise ValueError(f"rng: {k!r} is not the index of a module that draws")
        mods[int(k)]._rng.bit_generator.state = state


def copy_rng_states(dst: nn.Module, src: nn.Module) -> None:
    """dst's modules that draw (dropout) continue from src's generator
    states (a loaded checkpoint's model into one of the same config)."""
    _set_rng_states(dst, _rng_states(src))


def save(
    path, model: nn.Module, optimizer=None, meta: dict | None = None, arrays: dict | None = None
) -> None:
    """Write model (+ optimizer state, + JSON-serialisable meta, + the
    caller's arrays by name, no Python objects) to path, atomically."""
    header = dict(
        format=FORMAT,
        lstm_ext_version=__version__,
        model=model.config(),
        rng=_rng_states(model),
        meta=meta or {},
    )
    for k in arrays or {}:  # a zip member's name: load reads back what save wrote
        if not isinstance(k, str) or not 0 < len(k) <= 200 or "\0" in k:
            why = f"expected names of 1 to 200 characters, no NUL, got {k!r:.60}"
            raise ValueError(f"arrays: {why}")
    extra = {f"extra/{k}": np.asarray(_device.host(v)) for k, v in (arrays or {}).items()}
    for k, v in extra.items():  # np.savez would pickle them, and load refuses those
        if v.dtype.hasobject:
            raise TypeError(f"arrays[{k[len('extra/') :]!r}]: expected numbers, got dtype object")
    arrays = {f"param/{k}": _device.host(v) for k, v in model.params.items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays.update(extra)
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    write_atomically(path, lambda f: np.savez(f, **arrays))


def _check_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, file_size: int) -> None:
    """CheckpointError unless the member is a .npy array whose bytes can hold
    what its header declares (checked before NumPy allocates for it)."""
    name = info.filename
    if not name.endswith(".npy"):
        raise CheckpointError(f"member {name!r} is not a .npy array")
    if info.compress_type != zipfile.ZIP_STORED:  # as np.savez writes: no zip bombs
        raise CheckpointError(f"member {name!r} is compressed (method {info.compress_type})")
    if info.file_size != info.compress_size or info.compress_size > file_size:
        raise CheckpointError(
            f"member {name!r} claims {info.file_size} bytes stored in {info.compress_size}, "
            f"in a file of {file_size}"
        )
    with zf.open(info) as f:
        version = np.lib.format.read_magic(f)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}.get(version)  # fmt: skip
        if read is None:  # 3.0 is for non-Latin-1 field names: never a checkpoint's
            raise CheckpointError(f"member {name!r}: .npy format version {version}")
        shape, _, dtype = read(f)
    if dtype.hasobject:
        raise CheckpointError(f"member {name!r} holds Python objects (never unpickled)")
    if math.prod(shape) * dtype.itemsize > info.file_size:
        raise CheckpointError(
            f"member {name!r} declares {dtype} {shape}, more than its {info.file_size} bytes"
        )


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    file_size = path.stat().st_size
    # our own file object: np.load leaves a path's file open when the zip is bad
    with open(path, "rb") as f, warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # NumPy's for a Python 2 .npy header
        if f.read(4) not in (b"PK\x03\x04", b"PK\x05\x06"):  # what np.load takes for a zip
            raise CheckpointError("not a .npz (zip) file")
        f.seek(0)
        with zipfile.ZipFile(f) as zf:
            arrays = {}
            for info in zf.infolist():
                try:
                    name = info.filename[: -len(".npy")]
                    if name in arrays:  # a read by name would take another member than the checked
                        raise CheckpointError(f"member {info.filename!r} appears twice")
                    _check_member(zf, info, file_size)
                    with zf.open(info) as member:  # the member checked, CRC-checked as read
                        arrays[name] = np.lib.format.read_array(member, allow_pickle=False)
                except (CheckpointError, MemoryError):
                    raise
                except Exception as e:  # what and why: see load
                    why = str(e) or type(e).__name__
                    raise CheckpointError(f"member {info.filename!r}: {why}") from None
            return arrays


def _declared_parameters(config, depth: int = 0) -> int:
    """How many parameter values the module of ``config`` would allocate, from
    its sizes alone; a size that is not an integer counts 0 (``from_config``
    refuses it)."""
    if not isinstance(config, dict):
        return 0
    if config.get("type") == "Sequential":
        if depth:  # as nn.Sequential refuses
            raise CheckpointError("model config: a Sequential inside a Sequential")
        mods = config.get("modules")
        mods = mods if isinstance(mods, list) else []
        return sum(_declared_parameters(m, depth + 1) for m in mods)

    def size(key: str, default: int = 0) -> int:
        v = config.get(key, default)
        return max(v, 0) if isinstance(v, int) and not isinstance(v, bool) else 0

    bias = bool(config.get("bias", True))
    if config.get("type") == "Linear":
        return size("out_features") * (size("in_features") + bias)
    if config.get("type") == "Embedding":
        return size("num_embeddings") * size("embedding_dim")
    if config.get("type") == "LSTM":  # the shapes of nn.LSTM: 4H rows, O = P or H
        H, P, layers = size("hidden_size"), size("proj_size"), size("num_layers", 1)
        D, O = 1 + bool(config.get("bidirectional", False)), size("proj_size") or H
        per = 4 * H * O + 8 * H * bias + P * H  # weight_hh, biases, weight_hr
        first, above = 4 * H * size("input_size") + per, 4 * H * D * O + per
        return D * first + max(layers - 1, 0) * D * above
    return 0


def load(path, *, expect_config: dict | None = None) -> Checkpoint:
    """Read a checkpoint written by ``save``; rebuild its model with the saved
    weights. ``expect_config``: the ``config()`` the model must have, else
    CheckpointError. Never unpickles."""
    path = Path(path)
    if path.is_dir():  # had been "no such file"
        raise CheckpointError(f"checkpoint {path}: a directory, not a checkpoint file")
    if not path.is_file():
        what = "not a regular file" if path.exists() else "no such file"
        raise CheckpointError(f"checkpoint {path}: {what}")
    try:
        arrays = _read_arrays(path)
    except MemoryError:
        raise  # sizes are checked first: this is the machine's, not the file's
    except Exception as e:
        # zipfile, zlib and NumPy's .npy reader raise a dozen types for bad
        # bytes (BadZipFile, zlib.error, EOFError, NotImplementedError,
        # tokenize.TokenError, SyntaxError, ...): all mean a corrupt file
        why = str(e) or type(e).__name__
        raise CheckpointError(f"checkpoint {path}: truncated or corrupt ({why})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"checkpoint {path}: not an lstm_ext checkpoint (no __meta__)")
    try:
        header = json.loads(arrays.pop("__meta__").tobytes().decode())
        fmt = header["format"]
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable metadata ({e})") from None
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {fmt!r}, expected {FORMAT!r}")
    if expect_config is not None and header.get("model") != expect_config:
        raise CheckpointError(
            f"checkpoint {path}: model {header.get('model')} does not match {expect_config}"
        )
    params = {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
    for k, v in params.items():
        if v.dtype.kind not in "biuf":
            raise CheckpointError(f"checkpoint {path}: parameter {k!r} has dtype {v.dtype}")
    declared = _declared_parameters(header.get("model"))
    held = sum(v.size for v in params.values())
    if declared > 2 * held + _SPARE_PARAMETERS:
        raise CheckpointError(
            f"checkpoint {path}: its model config declares {declared} parameter values, "
            f"the file holds {held}"
        )
    try:
        model = nn.from_config(header["model"])
        with np.errstate(over="ignore"):  # float64 values past float32's range: inf
            model.load_state_dict(params)
        _set_rng_states(model, header.get("rng", {}))
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, RuntimeError) as e:
        raise CheckpointError(f"checkpoint {path}: does not fit its model ({e})") from None
    optim = {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
    extra = {k[len("extra/") :]: v for k, v in arrays.items() if k.startswith("extra/")}
    version = header.get("lstm_ext_version", "")
    return Checkpoint(model, optim, header.get("meta", {}), version, extra)
