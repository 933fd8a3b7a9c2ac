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

    As ``open(path, "wb")`` would: a new file gets 0o666 less the process's
    umask (applied by the kernel: the umask itself is never changed, as that
    is process-wide); an existing file keeps its permission bits, so that a
    file its owner made private stays private, and one that may not be
    written is a PermissionError; a symbolic link is written through, its
    target replaced and the link kept.
    """
    shown = str(path)  # errors name the path as given
    path = Path(os.path.realpath(path))
    try:
        mode = os.stat(path).st_mode & 0o777
    except FileNotFoundError:
        mode = None
    if mode is not None and not os.access(path, os.W_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), shown)
    tmp, fd = _create_beside(path, shown)
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
            raise _naming(e, shown) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    try:  # the rename itself reaches the disk, where the folder can be opened
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:  # a folder one may write but not read: saved all the same
        return
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _create_beside(path: Path, shown: str) -> tuple[Path, int]:
    """A new, empty, hidden file in path's folder, created with mode 0o666
    (less the umask), and its descriptor open for writing."""
    for _ in range(_TRIES):
        # path.name cut, so that a name open() takes (255 bytes) fits too
        tmp = path.parent / f".{path.name[:200]}.{secrets.token_hex(4)}.tmp"
        try:
            return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except FileExistsError:
            continue  # another writer's name: draw again
        except OSError as e:
            raise _naming(e, shown) from None
    raise FileExistsError(errno.EEXIST, f"{_TRIES} temporary names beside it taken", shown)


def _naming(e: OSError, shown: str) -> OSError:
    """``e`` (about the temporary file) as the same error about ``shown``."""
    return type(e)(e.errno, e.strerror, shown)
