"""Exact inner-product top-k over (memory-mapped) rows in bounded memory, and held-out queries for recall."""

from __future__ import annotations

import mmap
import os

import numpy as np

SCAN_CHUNK = 65_536  # rows converted to float32 and scored at a time
DOT_CHUNK_BYTES = 1 << 20  # stored rows a re-rank holds at once (RowFile.dot)


def release_pages(array) -> None:
    """Drop the pages of a memory-mapped ``array`` from this process's resident set (MADV_DONTNEED).

    File-backed pages stay in the page cache (dirty ones are still written back: numpy maps files shared), so
    nothing is lost; they only stop counting in the RSS of a process that streams a file larger than memory.
    A plain array is left alone.
    """
    base = array
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "_mmap", None) if isinstance(base, np.memmap) else getattr(base, "base", None)
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        try:
            base.madvise(mmap.MADV_DONTNEED)
        except (OSError, ValueError):  # closed map or an unsupported platform: RSS just stays higher
            pass


def iter_rows(vectors, chunk: int = SCAN_CHUNK):
    """Yield ``(start, float32 block)`` over the rows of ``vectors``, releasing memory-mapped pages after each."""
    for start in range(0, len(vectors), chunk):
        block = np.asarray(vectors[start:start + chunk], np.float32)
        release_pages(vectors)
        yield start, block


def exact_topk(queries: np.ndarray, vectors, k: int, chunk: int = SCAN_CHUNK) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` inner products (scores, row positions), each (n_queries × k), best first.

    ``vectors`` may be a memory map of any float dtype; it is read ``chunk`` rows at a time (FAISS's blocked
    BLAS k-NN per chunk, then a merge) and its pages released, so memory stays at one block plus the results.

    >>> exact_topk(np.eye(2, dtype=np.float32), np.array([[0, 1], [1, 0], [.6, .8]], np.float32), 2)[1].tolist()
    [[1, 2], [0, 2]]
    """
    import faiss

    q = np.ascontiguousarray(np.atleast_2d(queries), np.float32)
    k = min(k, len(vectors))
    best_s = np.full((len(q), 0), -np.inf, np.float32)
    best_i = np.zeros((len(q), 0), np.int64)
    for start, block in iter_rows(vectors, chunk):
        s, i = faiss.knn(q, block, min(k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        scores, ids = np.hstack([best_s, s]), np.hstack([best_i, i + start])
        top = np.lexsort((ids, -scores), axis=1)[:, :k]
        best_s, best_i = np.take_along_axis(scores, top, 1), np.take_along_axis(ids, top, 1)
    return best_s, best_i


def exact_search(queries: np.ndarray, vectors, k: int, chunk: int = SCAN_CHUNK) -> np.ndarray:
    """Positions (n_queries × k) of the exact top-k inner products over ``vectors`` (may be a memory map)."""
    return exact_topk(queries, vectors, k, chunk)[1]


def without_own(found: np.ndarray, own: np.ndarray, k: int) -> np.ndarray:
    """The first ``k`` entries of each row of ``found`` other than that row's ``own`` id (leave-one-out).

    >>> without_own(np.array([[5, 1, 2], [3, 4, 6]]), np.array([5, 9]), 2).tolist()
    [[1, 2], [3, 4]]
    """
    keep = found != np.asarray(own)[:, None]
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # kept entries first, rank order unchanged
    return np.take_along_axis(found, order, 1)


class RowFile:
    """Rows of a ``.npy`` file read with ``pread`` (one system call per row, from the page cache when warm): no
    memory map, so neither page faults on first touch nor pages piling up in the RSS (what a re-rank reads)."""

    def __init__(self, path):
        with open(path, "rb") as fh:
            fmt = np.lib.format
            read = fmt.read_array_header_1_0 if fmt.read_magic(fh) == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read(fh)
            self.offset = fh.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: not a C-ordered 2-D array")
        self.path, self.shape, self.dtype = str(path), shape, np.dtype(dtype)
        self.row_bytes = shape[1] * self.dtype.itemsize
        self._fd = os.open(self.path, os.O_RDONLY)

    def take(self, positions: np.ndarray, out: np.ndarray | None = None, rows: np.ndarray | None = None) -> np.ndarray:
        """Rows ``positions`` as float32 (len(positions), d); given ``out``, written into its rows ``rows`` instead
        (float32 rows are read straight into place, float16 ones converted once).

        Raises:
            OSError: a row past the end of the file (a truncated segment).
        """
        if out is None:
            out = np.empty((len(positions), self.shape[1]), np.float32)
        rows = np.arange(len(positions)) if rows is None else rows
        if self.dtype == np.float32:
            self._read(positions, (out[r] for r in rows))
        else:
            raw = np.empty((len(positions), self.shape[1]), self.dtype)
            self._read(positions, raw)
            out[rows] = raw
        return out

    def dot(self, positions: np.ndarray, queries: np.ndarray, chunk_bytes: int = DOT_CHUNK_BYTES) -> np.ndarray:
        """``queries @ rows[positions].T`` (len(queries), len(positions)) float32, the rows read a chunk at a time
        into one small buffer: a re-rank of 512 slide vectors (16 MB at 8,192-d) holds 1 MB at once and scores
        each chunk while it is still in the cache."""
        out = np.empty((len(queries), len(positions)), np.float32)
        dot_rows([(self, positions, np.arange(len(positions)))], queries, out, chunk_bytes)
        return out

    def _read(self, positions: np.ndarray, into) -> None:
        """Row ``positions[i]`` into the i-th buffer of ``into`` (rows of an array, or row views), one pread each."""
        for row, p in zip(into, positions):
            if os.preadv(self._fd, [row], self.offset + int(p) * self.row_bytes) != self.row_bytes:
                raise OSError(f"{self.path}: row {int(p)} is past the end of the file")

    def __del__(self) -> None:
        if getattr(self, "_fd", None) is not None:
            os.close(self._fd)


def dot_rows(pieces, queries: np.ndarray, out: np.ndarray, chunk_bytes: int = DOT_CHUNK_BYTES) -> np.ndarray:
    """``out[:, where] = queries @ file.rows[positions].T`` for each ``(file, positions, where)`` of ``pieces``
    (:class:`RowFile` objects of one dtype and width, e.g. one per segment), the rows of all of them read into one
    buffer of at most ``chunk_bytes`` and scored a buffer at a time (one product per buffer, not per file)."""
    pieces = [p for p in pieces if len(p[1])]
    if not pieces:
        return out
    first = pieces[0][0]
    step = max(1, chunk_bytes // first.row_bytes)
    buf = np.empty((min(step, sum(len(p[1]) for p in pieces)), first.shape[1]), first.dtype)
    filled, targets = 0, []

    def score() -> None:
        block = buf[:filled]
        out[:, np.concatenate(targets)] = queries @ (block if block.dtype == np.float32 else block.astype(np.float32)).T

    for file, positions, where in pieces:
        lo = 0
        while lo < len(positions):
            take = min(len(positions) - lo, step - filled)
            file._read(positions[lo:lo + take], buf[filled:filled + take])
            targets.append(where[lo:lo + take])
            filled, lo = filled + take, lo + take
            if filled == step:
                score()
                filled, targets = 0, []
    if filled:
        score()
    return out


def row_gather(vectors, ids: np.ndarray):
    """A function ids → float32 rows of ``vectors``, whose row i holds ``ids[i]`` (ids increasing); it reads a
    memory map in file order and releases its pages.

    >>> row_gather(np.eye(3, dtype=np.float32), np.array([10, 20, 30]))(np.array([30, 10])).tolist()
    [[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]
    """
    def gather(wanted: np.ndarray) -> np.ndarray:
        wanted = np.asarray(wanted, np.int64)
        order = np.argsort(wanted, kind="stable")
        out = np.empty((len(wanted), vectors.shape[1]), np.float32)
        out[order] = np.asarray(vectors[np.searchsorted(ids, wanted[order])], np.float32)
        release_pages(vectors)
        return out

    return gather


def tied_recall(queries: np.ndarray, found: np.ndarray, gather, kth: np.ndarray, tolerance: float = 1e-5) -> float:
    """Recall@k where a result counts when its exact score reaches the exact k-th best score ``kth`` (per query)
    minus ``tolerance``: results tied with the k-th (float32 rounding differs between FAISS and BLAS) are hits.

    Args:
        queries: (n, d). found: (n, k) result ids (-1 = missing). gather: ids → their exact float32 rows.
        kth: (n,) the exact k-th best score of each query.

    >>> x = np.eye(3, dtype=np.float32)
    >>> tied_recall(x[:1], np.array([[0, 2]]), row_gather(x, np.arange(3)), np.array([0.0]))
    1.0
    """
    if found.size == 0:
        return 1.0
    valid = found >= 0
    scores = np.full(found.shape, -np.inf, np.float32)
    q_of = np.broadcast_to(np.arange(len(found))[:, None], found.shape)[valid]
    scores[valid] = np.einsum("ij,ij->i", gather(found[valid]), np.asarray(queries, np.float32)[q_of])
    return float(np.mean((scores >= kth[:, None] - tolerance).sum(axis=1) / found.shape[1]))
