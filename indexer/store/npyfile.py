"""``.npy`` files of a known shape written row block by row block through the file, never through a memory map:
a full disk is then an ``OSError`` (ENOSPC) at a write or at the up-front reservation, not a SIGBUS when a page
of a mapping cannot be backed."""

from __future__ import annotations

import errno
import io
import os
from pathlib import Path

import numpy as np

_NO_FALLOCATE = {errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class NpyWriter:
    """A C-ordered 2-D ``.npy`` file of ``shape`` and ``dtype`` whose rows are written with ``pwrite``.

    Its blocks are reserved when it is created (``posix_fallocate``, where the file system supports it), so a
    disk too small for it fails there, before any row is computed.

    Args:
        path: the file to create (replaced if present). dtype, shape: of the array it holds.

    Raises:
        OSError: the disk cannot hold it (ENOSPC), or any other failure of the file system.
    """

    def __init__(self, path: str | Path, dtype, shape: tuple[int, int]):
        self.path, self.dtype, self.shape = Path(path), np.dtype(dtype), tuple(int(x) for x in shape)
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": np.lib.format.dtype_to_descr(self.dtype),
                                                      "fortran_order": False, "shape": self.shape})
        self.offset = len(header.getvalue())
        self.row_bytes = self.shape[1] * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
        try:
            _write_at(self._fd, header.getvalue(), 0)
            size = self.offset + self.shape[0] * self.row_bytes
            try:
                os.posix_fallocate(self._fd, 0, max(size, 1))
            except OSError as exc:
                if exc.errno not in _NO_FALLOCATE:
                    raise
            os.ftruncate(self._fd, size)
        except BaseException:
            self.close()
            raise

    def write(self, start: int, rows: np.ndarray) -> None:
        """Write ``rows`` (converted to the file's dtype) as rows ``start`` … ``start + len(rows) - 1``."""
        rows = np.ascontiguousarray(rows, self.dtype).reshape(-1, self.shape[1])
        if start < 0 or start + len(rows) > self.shape[0]:
            raise ValueError(f"rows {start}…{start + len(rows)} outside the {self.shape[0]} rows of {self.path}")
        _write_at(self._fd, memoryview(rows).cast("B"), self.offset + start * self.row_bytes)

    def close(self) -> None:
        """Close the file (a finished segment fsyncs every file before it is published)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            self.close()


def _write_at(fd: int, data, offset: int) -> None:
    """``pwrite`` all of ``data`` at ``offset`` (a short write continues; an error raises OSError)."""
    view = memoryview(data).cast("B")
    while len(view):
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written
