"""FAISS index files: atomic save, checked load, serialized size."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from indexer.errors import IndexError_
from indexer.vectors.build import first_line
from indexer.vectors.device import to_cpu

if TYPE_CHECKING:  # faiss is imported lazily so `slidesearch --help` stays instant
    import faiss


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write ``index`` (moved to CPU if needed) atomically: temp file in the same folder, then rename."""
    import faiss

    from indexer.store.atomic import atomic_path, os_error

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        try:  # through Python's file: a failed write or close (a full disk) is an OSError, and FAISS prints nothing
            faiss.write_index(to_cpu(index), faiss.PyCallbackIOWriter(fh.write))
        except RuntimeError as exc:  # a FAISS I/O error names its cause in its message only
            raise os_error(exc, path) from None


def load_index(path: str | os.PathLike) -> faiss.Index:
    """Read an index written by :func:`save_index`.

    Raises:
        IndexError_: when the file is missing or not a FAISS index.
    """
    import faiss

    if not Path(path).is_file():
        raise IndexError_(f"no FAISS index at {path}")
    try:
        return faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexError_(f"cannot read FAISS index {path}: {first_line(exc)}") from None


def index_nbytes(index: faiss.Index) -> int:
    """Serialized size of ``index`` in bytes (what it occupies on disk and, roughly, in memory)."""
    import faiss

    return int(faiss.serialize_index(to_cpu(index)).size)
