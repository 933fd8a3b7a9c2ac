"""Saving files: ``checkpoint.save`` and ``export.save_model`` share one
writer (``_files.write_atomically``) and so the same guarantees.

- Both flush the file and then its folder to disk; a failure at any point
  leaves the previous file as it was and no temporary file behind.
- A new file gets the permissions ``open(path, "wb")`` would give it (0o666
  less the umask), an existing one keeps its own.
- An error about the file (no such folder, a folder in the way) names the
  path given, not the hidden temporary file.
"""

import errno
import os
import secrets
import stat

import pytest

from lstm_ext import checkpoint, export, nn

SAVERS = {
    "checkpoint": lambda path: checkpoint.save(path, nn.LSTM(3, 4, seed=1)),
    "export": lambda path: export.save_model(nn.LSTM(3, 4, seed=1), path),
}


@pytest.fixture(params=list(SAVERS))
def save(request):
    return SAVERS[request.param]


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """Sets the process's umask for the test, then restores it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


def test_file_and_folder_reach_the_disk(tmp_path, monkeypatch, save):
    synced = []  # the kind of each descriptor fsync'ed, in order
    real = os.fsync

    def fsync(fd):
        synced.append(stat.S_IFMT(os.fstat(fd).st_mode))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    save(tmp_path / "m")
    assert synced == [stat.S_IFREG, stat.S_IFDIR]  # the file, then the rename


def test_a_failed_save_leaves_the_old_file(tmp_path, monkeypatch, save):
    path = tmp_path / "m"
    save(path)
    old = path.read_bytes()

    def fail(fd):
        raise OSError(errno.EIO, "the disk failed")

    monkeypatch.setattr(os, "fsync", fail)
    with pytest.raises(OSError, match="the disk failed"):
        save(path)
    assert path.read_bytes() == old
    assert os.listdir(tmp_path) == ["m"]  # no temporary left


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o077, 0o002], ids=oct)
def test_a_new_file_gets_what_open_gives(tmp_path, umask, save, mask):
    umask(mask)
    with open(tmp_path / "plain", "wb"):
        pass
    save(tmp_path / "m")
    assert mode_of(tmp_path / "m") == mode_of(tmp_path / "plain") == 0o666 & ~mask


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o664], ids=oct)
def test_an_existing_file_keeps_its_mode(tmp_path, umask, save, mode):
    umask(0o077)  # what a new file would get: 0o600
    path = tmp_path / "m"
    save(path)
    path.chmod(mode)
    save(path)
    assert mode_of(path) == mode


def test_a_missing_folder_is_named(tmp_path, save):
    path = tmp_path / "nodir" / "m"
    with pytest.raises(FileNotFoundError) as e:
        save(path)
    assert e.value.filename == str(path) and ".tmp" not in str(e.value)
    assert os.listdir(tmp_path) == []


def test_a_folder_in_the_way_is_named(tmp_path, save):
    path = tmp_path / "m"
    (path / "inside").mkdir(parents=True)
    with pytest.raises(OSError) as e:  # IsADirectoryError on Linux
        save(path)
    assert e.value.filename == str(path) and ".tmp" not in str(e.value)
    assert os.listdir(tmp_path) == ["m"]  # no temporary left


def test_a_taken_temporary_name_is_skipped(tmp_path, monkeypatch, save):
    """Another writer's temporary file of the same name is left alone."""
    (tmp_path / ".m.0000.tmp").write_bytes(b"theirs")
    names = iter(["0000", "1111"])
    monkeypatch.setattr(secrets, "token_hex", lambda n: next(names))
    save(tmp_path / "m")
    assert (tmp_path / ".m.0000.tmp").read_bytes() == b"theirs"
    assert sorted(os.listdir(tmp_path)) == [".m.0000.tmp", "m"]


def test_a_link_is_written_through(tmp_path, save):
    # as open() writes through a symbolic link: the target replaced, the link
    # kept (the link had been replaced by a file, the target left as it was)
    target, link = tmp_path / "target", tmp_path / "link"
    target.write_bytes(b"old")
    link.symlink_to(target)
    save(link)
    assert link.is_symlink() and target.read_bytes() != b"old"
    assert sorted(os.listdir(tmp_path)) == ["link", "target"]


def test_a_file_that_open_may_not_write_is_refused_as_open_refuses_it(tmp_path, save):
    # (as root, open() writes a read-only file, and so does the save)
    path = tmp_path / "m"
    path.write_bytes(b"old")
    path.chmod(0o444)
    try:
        with open(path, "ab"):
            pass
    except PermissionError:
        with pytest.raises(PermissionError) as e:
            save(path)
        assert e.value.filename == str(path) and path.read_bytes() == b"old"
    else:
        save(path)
        assert path.read_bytes() != b"old" and mode_of(path) == 0o444


def test_a_folder_that_cannot_be_opened_for_its_flush_is_saved_to_all_the_same(
    tmp_path, monkeypatch, save
):
    # a folder one may write but not read: the rename is done, so no error
    real_open = os.open

    def no_folder(name, flags, *args):
        if os.path.isdir(name):
            raise PermissionError(errno.EACCES, "denied", name)
        return real_open(name, flags, *args)

    monkeypatch.setattr(os, "open", no_folder)
    save(tmp_path / "m")
    assert (tmp_path / "m").stat().st_size > 0


def test_a_long_name_open_takes_is_saved(tmp_path, save):
    name = "m" * 250  # the temporary name adds 14 characters: cut to fit
    save(tmp_path / name)
    assert os.listdir(tmp_path) == [name]
