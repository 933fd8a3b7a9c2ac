"""Checkpoints: a model, its optimiser's state and metadata in one ``.npz``.

The file is a NumPy ``.npz`` (a zip of ``.npy`` arrays) read with
``allow_pickle=False``: loading runs no code, so a checkpoint from a stranger
is safe to open. It holds

- ``param/<name>``: every parameter, by the model's names;
- ``optim/<key>``: the optimiser's ``state_dict()`` (arrays only);
- ``__meta__``: UTF-8 JSON as a uint8 array: the format tag, the lstm_ext
  version, the model's ``config()`` (its layer sizes and dtype), the random
  generator states of modules that draw (dropout), and the caller's metadata.

Saving is atomic: the file is written beside the target under a temporary
name, flushed to disk and renamed over it, so a crash mid-save leaves the
previous checkpoint intact. A missing, truncated, corrupt or mismatched file
raises ``CheckpointError`` (a ValueError) that says which and why.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import _device, nn
from ._version import __version__

FORMAT = "lstm_ext.checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit what was asked for."""


@dataclass
class Checkpoint:
    model: nn.Module
    optimizer_state: dict = field(default_factory=dict)  # for optimizer.load_state_dict
    meta: dict = field(default_factory=dict)  # what the caller saved
    version: str = ""  # lstm_ext version that wrote it


def _rng_states(model: nn.Module) -> dict:
    mods = model.modules if isinstance(model, nn.Sequential) else [model]
    return {str(k): m._rng.bit_generator.state for k, m in enumerate(mods) if hasattr(m, "_rng")}


def _set_rng_states(model: nn.Module, states: dict) -> None:
    mods = model.modules if isinstance(model, nn.Sequential) else [model]
    for k, state in states.items():
        mods[int(k)]._rng.bit_generator.state = state


def save(path, model: nn.Module, optimizer=None, meta: dict | None = None) -> None:
    """Write model (+ optimizer state, + JSON-serialisable meta) to path, atomically."""
    path = Path(path)
    header = dict(
        format=FORMAT,
        lstm_ext_version=__version__,
        model=model.config(),
        rng=_rng_states(model),
        meta=meta or {},
    )
    arrays = {f"param/{k}": _device.host(v) for k, v in model.params.items()}
    if optimizer is not None:
        arrays.update({f"optim/{k}": np.asarray(v) for k, v in optimizer.state_dict().items()})
    arrays["__meta__"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent or ".", os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)


def load(path, *, expect_config: dict | None = None) -> Checkpoint:
    """Read a checkpoint written by ``save``; rebuild its model with the saved
    weights. ``expect_config``: the ``config()`` the model must have, else
    CheckpointError. Never unpickles."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path}: no such file")
    try:  # our own file object: np.load leaves a path's file open when the zip is bad
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads (and CRC-checks) every member
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as e:
        raise CheckpointError(f"checkpoint {path}: truncated or corrupt ({e})") from None
    if "__meta__" not in arrays:
        raise CheckpointError(f"checkpoint {path}: not an lstm_ext checkpoint (no __meta__)")
    try:
        header = json.loads(arrays.pop("__meta__").tobytes().decode())
        fmt = header["format"]
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"checkpoint {path}: unreadable metadata ({e})") from None
    if fmt != FORMAT:
        raise CheckpointError(f"checkpoint {path}: format {fmt!r}, expected {FORMAT!r}")
    if expect_config is not None and header.get("model") != expect_config:
        raise CheckpointError(
            f"checkpoint {path}: model {header.get('model')} does not match {expect_config}"
        )
    try:
        model = nn.from_config(header["model"])
        model.load_state_dict(
            {k[len("param/") :]: v for k, v in arrays.items() if k.startswith("param/")}
        )
        _set_rng_states(model, header.get("rng", {}))
    except (ValueError, TypeError, KeyError, IndexError) as e:
        raise CheckpointError(f"checkpoint {path}: does not fit its model ({e})") from None
    optim = {k[len("optim/") :]: v for k, v in arrays.items() if k.startswith("optim/")}
    return Checkpoint(model, optim, header.get("meta", {}), header.get("lstm_ext_version", ""))
