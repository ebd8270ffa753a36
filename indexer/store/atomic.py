"""Atomic file writes (temporary file in the same folder, fsync, rename) and removal of their leftovers."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)


def atomic_path(path: Path) -> "_AtomicPath":
    """Context manager yielding a temporary path that is fsynced and renamed onto ``path`` on success."""
    return _AtomicPath(Path(path))


class _AtomicPath:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=TMP_SUFFIX, dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
            fsync_dir(self.path.parent)
        else:
            self.tmp.unlink(missing_ok=True)


def os_error(exc: Exception, path) -> Exception:
    """The OSError that a library's I/O error stands for when its message names the cause (FAISS: ``write error
    in … (No space left on device)``), else ``exc`` itself.

    >>> os_error(RuntimeError("write error in f: 0 != 8 (No space left on device)"), "f").errno == errno.ENOSPC
    True
    """
    message = str(exc)
    for code in (errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM):
        if f"({os.strerror(code)})" in message:
            return OSError(code, os.strerror(code), str(path))
    return exc


def remove_temporaries(*folders: Path) -> int:
    """Delete ``.*.tmp`` files and ``.build-*`` folders a killed writer left in ``folders``; returns how many."""
    removed = 0
    for folder in folders:
        if not folder.is_dir():
            continue
        for leftover in folder.iterdir():
            if leftover.name.startswith(".") and (leftover.name.endswith(TMP_SUFFIX) or leftover.name.startswith(".build-")):
                shutil.rmtree(leftover) if leftover.is_dir() else leftover.unlink(missing_ok=True)
                removed += 1
    return removed
