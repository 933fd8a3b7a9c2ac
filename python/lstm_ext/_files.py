"""Saving a file atomically, shared by ``checkpoint.save`` and
``export.save_model``."""

from __future__ import annotations

import errno
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

_TRIES = 100  # random temporary names tried before giving up


def write_atomically(path, content: bytes | Callable[[BinaryIO], object]) -> None:
    """Write ``content`` (bytes, or a function that writes to the file object
    it is given) to ``path``, all or nothing.

    The bytes go to a hidden temporary file beside ``path``, which is flushed
    to disk and renamed over ``path``; then the folder is flushed, so that
    the rename reaches the disk too. A crash or an error at any point leaves
    ``path`` as it was, and an error removes the temporary file. An error
    about the file (no such folder, no permission) names ``path``, not the
    temporary file.

    Permissions: those ``open(path, "wb")`` would give. A new file gets
    0o666 less the process's umask (applied by the kernel: the umask itself
    is never changed, as that is process-wide); an existing file keeps its
    permission bits, so that a file its owner made private stays private.
    """
    path = Path(path)
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = None
    tmp, fd = _create_beside(path)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            if callable(content):
                content(f)
            else:
                f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.replace(tmp, path)
        except OSError as e:
            raise _naming(e, path) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself reaches the disk
    finally:
        os.close(dir_fd)


def _create_beside(path: Path) -> tuple[Path, int]:
    """A new, empty, hidden file in path's folder, created with mode 0o666
    (less the umask), and its descriptor open for writing."""
    for _ in range(_TRIES):
        tmp = path.parent / f".{path.name}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue  # another writer's name: draw again
        except OSError as e:
            raise _naming(e, path) from None
    raise FileExistsError(errno.EEXIST, f"{_TRIES} temporary names beside it taken", str(path))


def _naming(e: OSError, path: Path) -> OSError:
    """``e`` (about the temporary file) as the same error about ``path``."""
    return type(e)(e.errno, e.strerror, str(path))
