"""FAISS layer: index choice, build, recall check, atomic save/load, filtered search, removal."""

from __future__ import annotations

import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import IndexError_, QueryError
from indexer.vectors.exact import (  # noqa: F401 (exact_search re-exported)
    exact_search, exact_topk, iter_rows, release_pages, row_gather, tied_recall, without_own)
from indexer.vectors.device import (  # noqa: F401 (the GPU side, re-exported)
    DEVICE_ENV, base_index as _base, faiss_device, gpu_enabled, is_gpu as _is_gpu, to_cpu as _to_cpu, to_gpu)

if TYPE_CHECKING:  # faiss is imported lazily so `slidesearch --help` stays instant
    import faiss

KINDS = ("flat", "ivf_flat", "hnsw", "ivf_pq")
FLAT_MAX_COUNT = 50_000
HNSW_MAX_COUNT = 200_000
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 2**30
MIN_POINTS_PER_CENTROID = 39  # FAISS k-means warns below this
TRAIN_SAMPLE = 100_000
TRAIN_BYTES = 2**30
HNSW_EF_CONSTRUCTION = 40
_GPU_MAX_K = 2048
BITMAP_BITS_PER_ID = 128  # a bitmap is used while it costs at most ~16 bytes per allowed id
EXACT_FILTER_FLOATS = 2**18  # allowed-set size × dim under which filtered search is exact
ADD_CHUNK = 65_536  # rows converted and added to an index at a time
MAX_NLIST = 16_384  # k-means beyond this many lists is GPU work (hours on a few CPU cores)


@dataclass(frozen=True)
class IndexChoice:
    """A FAISS index configuration (inner-product metric; vectors are unit rows).

    Attributes:
        kind: ``"flat"``, ``"ivf_flat"``, ``"hnsw"`` or ``"ivf_pq"``.
        nlist: IVF inverted lists; m: PQ sub-quantizers; nbits: bits per PQ code.
        hnsw_m: HNSW neighbours per node; ef_search: HNSW search breadth; nprobe: IVF lists probed.
        coarse: IVF coarse quantizer other than exact search over the centroids (``"HNSW32"``: a graph, ~4×
            fewer distance computations to assign a vector at 4,096 lists). niter: k-means iterations (0: FAISS's 25).
    """

    kind: str
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    hnsw_m: int = 32
    ef_search: int = 64
    nprobe: int = 0
    coarse: str = ""
    niter: int = 0

    def describe(self) -> str:
        """FAISS factory string of the base index, e.g. ``"IVF1265,PQ64x8"``.

        >>> IndexChoice("ivf_pq", nlist=1024, m=64, nprobe=32).describe()
        'IVF1024,PQ64x8'
        >>> IndexChoice("hnsw").describe()
        'HNSW32'
        """
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}"
        ivf = f"IVF{self.nlist}" + (f"_{self.coarse}" if self.coarse else "")
        if self.kind == "ivf_flat":
            return f"{ivf},Flat"
        if self.kind == "ivf_pq":
            return f"{ivf},PQ{self.m}x{self.nbits}"
        raise IndexError_(f"unknown index kind {self.kind!r}; known: {', '.join(KINDS)}")


def ivf_params(count: int) -> tuple[int, int]:
    """(nlist, nprobe) for ``count`` vectors: nlist ≈ 4√n (≥ 39 points per list, ≤ MAX_NLIST), nprobe ≈ √nlist
    (≥ 8).

    >>> ivf_params(100_000), ivf_params(10**8)
    ((1265, 36), (16384, 128))
    """
    nlist = max(1, min(round(4 * math.sqrt(count)), count // MIN_POINTS_PER_CENTROID, MAX_NLIST))
    return nlist, min(nlist, max(8, math.ceil(math.sqrt(nlist))))


def train_sample_size(count: int, nlist: int, dim: int = 0) -> int:
    """Rows IVF training uses: ``min(count, max(40·nlist, 100,000))`` (≥ 39 per centroid, no FAISS warning), the
    100,000 lowered for wide vectors so the float32 sample stays within TRAIN_BYTES (1 GiB).

    >>> train_sample_size(10**7, 4096, 512), train_sample_size(10**5, 512, 12_288)
    (163840, 21845)
    """
    wide = TRAIN_SAMPLE if dim <= 0 else min(TRAIN_SAMPLE, TRAIN_BYTES // (4 * dim))
    return min(count, max(wide, 40 * nlist))


def estimated_bytes(kind: str, count: int, dim: int, m: int = 0, hnsw_m: int = 32) -> int:
    """Approximate resident size of an index of ``kind`` (vectors, graph links or codes, 8-byte ids, centroids).

    Building an IVF index also holds its float32 training sample for a while (:func:`train_sample_size` rows:
    335 MB at 4,096 lists of 512-d, 1.3 GB at MAX_NLIST), which the budget does not count.

    >>> estimated_bytes("flat", 1000, 512)
    2056000
    """
    nlist = ivf_params(count)[0]
    per_vector = {"flat": 4 * dim + 8, "ivf_flat": 4 * dim + 8, "hnsw": 4 * dim + 8 + 10 * hnsw_m,
                  "ivf_pq": m + 8}[kind]
    return count * per_vector + (4 * nlist * dim if kind.startswith("ivf") else 0)


def choose_index(count: int, dim: int, memory_budget_bytes: int | None = None) -> IndexChoice:
    """Pick the FAISS index for ``count`` unit vectors of ``dim`` under a memory budget (pure function).

    The rule, first match wins (budget ``None`` means 4 GiB):

    1. ``flat`` (exact) when ``count ≤ 50,000`` and the raw float32 vectors fit the budget;
    2. ``hnsw`` (M=32, efSearch 64) when ``count ≤ 200,000`` and vectors plus graph fit;
    3. ``ivf_flat`` (nlist ≈ 4√n, nprobe ≈ √nlist) while the raw vectors fit;
    4. ``ivf_pq`` otherwise: m is the largest divisor of ``dim`` with ``m ≤ dim/8`` (≤ 128) whose
       codes fit the budget; nbits is 8, fewer only when there are too few vectors to train 256 centroids.

    So a larger budget never picks a more compressed kind and a larger count never a less compressed one.

    Raises:
        IndexError_: when even 1-byte codes do not fit the budget.

    >>> choose_index(1_000, 512).describe()
    'Flat'
    >>> choose_index(100_000, 512).describe()
    'HNSW32'
    >>> choose_index(1_000_000, 512).describe()
    'IVF4000,Flat'
    >>> choose_index(1_000_000, 512, memory_budget_bytes=2**30).describe()
    'IVF4000,PQ64x8'
    >>> choose_index(10**8, 512).describe()  # lists capped at MAX_NLIST (was IVF40000: hours of CPU k-means)
    'IVF16384,PQ32x8'
    """
    if count < 0 or dim <= 0:
        raise IndexError_(f"cannot index {count} vectors of dimension {dim}")
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
    if count <= FLAT_MAX_COUNT and estimated_bytes("flat", count, dim) <= budget:
        return IndexChoice("flat")
    if count <= HNSW_MAX_COUNT and estimated_bytes("hnsw", count, dim) <= budget:
        return IndexChoice("hnsw")
    if estimated_bytes("ivf_flat", count, dim) <= budget:
        return choice_for_kind("ivf_flat", count, dim)
    for m in sorted((m for m in range(1, min(dim // 8, 128) + 1) if dim % m == 0), reverse=True) or [1]:
        if estimated_bytes("ivf_pq", count, dim, m=m) <= budget:
            return choice_for_kind("ivf_pq", count, dim, m=m)
    raise IndexError_(f"{count} vectors of dimension {dim} do not fit in {budget} bytes, even as PQ codes")


def choice_for_kind(kind: str, count: int, dim: int, m: int | None = None) -> IndexChoice:
    """Default parameters of ``kind`` for ``count`` vectors (the values :func:`choose_index` uses).

    PQ gets ``m`` sub-quantizers (default: largest divisor of ``dim`` ≤ min(dim/8, 128)) and 8 bits,
    fewer when ``count`` is too small to train 256 centroids from 39 points each.

    >>> choice_for_kind("ivf_pq", 10_000, 512).describe()
    'IVF256,PQ64x8'
    >>> choice_for_kind("ivf_pq", 5_000, 512).describe()
    'IVF128,PQ64x7'
    """
    if kind not in KINDS:
        raise IndexError_(f"unknown index kind {kind!r}; known: {', '.join(KINDS)}")
    if kind in ("flat", "hnsw"):
        return IndexChoice(kind)
    nlist, nprobe = ivf_params(count)
    if kind == "ivf_flat":
        return IndexChoice(kind, nlist=nlist, nprobe=nprobe)
    m = m or max(d for d in range(1, max(1, min(dim // 8, 128)) + 1) if dim % d == 0)
    nbits = max(1, min(8, int(math.log2(max(2, count // MIN_POINTS_PER_CENTROID)))))
    return IndexChoice(kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe)


def build_index(vectors: np.ndarray, ids: np.ndarray, choice: IndexChoice,
                use_gpu: bool | None = None, chunk: int = ADD_CHUNK) -> faiss.Index:
    """Build a CPU index holding ``vectors`` under explicit int64 ``ids``.

    ``vectors`` may be a memory map (float16 or float32): rows are converted and added ``chunk`` at a time,
    so memory is the index itself plus one chunk. IVF kinds are trained on at most ``max(100,000, 40·nlist)``
    sampled rows (seeded). Training and adding run on the GPU when :func:`gpu_enabled` and ``use_gpu``
    is not False; the result is CPU.

    Args:
        vectors: unit rows (n×d). ids: n distinct int64 ids (never file order by accident).
        choice: from :func:`choose_index`. use_gpu: None = when available, False = never.
        chunk: rows converted and added at a time.

    Raises:
        IndexError_: on a shape, dtype, norm or id mismatch.
    """
    import faiss

    if vectors.ndim != 2 or vectors.shape[1] == 0:
        raise IndexError_(f"vectors must be a 2-D array of rows, got shape {vectors.shape}")
    n, dim = vectors.shape
    ids = _check_ids(ids, n)
    if choice.kind in ("flat", "hnsw"):
        base = _empty_index(dim, choice)
        index = faiss.IndexIDMap2(base)  # the Python wrapper keeps `base` alive as a referenced object
        _add_chunks(index, vectors, ids, chunk)
        return index
    if not 1 <= choice.nlist <= n:
        raise IndexError_(f"{choice.describe()} needs 1 ≤ nlist ≤ {n} (the number of vectors)")
    sample = train_sample_size(n, choice.nlist)
    rows = np.sort(np.random.default_rng(0).choice(n, sample, replace=False))
    trained = train_index(vectors[rows], choice, use_gpu)
    return add_to_trained(trained, vectors, ids, use_gpu, chunk)


def train_index(sample: np.ndarray, choice: IndexChoice, use_gpu: bool | None = None) -> faiss.Index:
    """An empty IVF index of ``choice`` trained on ``sample`` (unit rows), on the GPU when enabled; CPU result.

    Raises:
        IndexError_: when FAISS cannot train it (too few rows for the lists or codes).
    """
    import faiss

    base = _empty_index(sample.shape[1], choice)
    if choice.niter:
        faiss.extract_index_ivf(base).cp.niter = choice.niter
    work = (to_gpu(base) if use_gpu is not False else None) or base
    try:
        work.train(_check_vectors(sample))
    except RuntimeError as exc:
        raise IndexError_(f"cannot train {choice.describe()} on {len(sample)} vectors: {_first_line(exc)}") from None
    trained = _to_cpu(work)
    faiss.downcast_index(trained).nprobe = choice.nprobe or ivf_params(len(sample))[1]
    return trained


def add_to_trained(trained: faiss.Index, vectors: np.ndarray, ids: np.ndarray, use_gpu: bool | None = None,
                   chunk: int = ADD_CHUNK) -> faiss.Index:
    """A copy of the trained empty IVF index ``trained`` holding ``vectors`` under ``ids`` (its codes only
    are new: lists, PQ codebooks and nprobe are the trained ones). Adds on the GPU when enabled; CPU result."""
    import faiss

    index = faiss.clone_index(trained)
    ids = _check_ids(ids, len(vectors))
    work = to_gpu(index) if use_gpu is not False and len(ids) else None
    _add_chunks(work if work is not None else index, vectors, ids, chunk)
    if work is not None:
        index = _to_cpu(work)
        faiss.downcast_index(index).nprobe = faiss.downcast_index(trained).nprobe
    return index


def _empty_index(dim: int, choice: IndexChoice):
    import faiss

    base = faiss.index_factory(dim, choice.describe(), faiss.METRIC_INNER_PRODUCT)
    if choice.kind == "ivf_pq":
        faiss.downcast_index(base).do_polysemous_training = False  # polysemous codes are unused and slow to train
    if choice.kind == "hnsw":
        base.hnsw.efConstruction, base.hnsw.efSearch = HNSW_EF_CONSTRUCTION, choice.ef_search
    return base


def _check_ids(ids, n: int) -> np.ndarray:
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) != n or len(np.unique(ids)) != len(ids) or (ids < 0).any():
        raise IndexError_(f"need {n} distinct non-negative ids, got {len(ids)} ({len(np.unique(ids))} distinct)")
    return ids


def _add_chunks(index, vectors, ids, chunk: int) -> None:
    for start, block in iter_rows(vectors, chunk):  # memory-mapped pages released after each block
        index.add_with_ids(_check_vectors(block), ids[start:start + len(block)])


def measure_recalls(indexes: dict, vectors: np.ndarray, ids: np.ndarray, k: int = 10, n_queries: int = 200,
                    seed: int = 0, queries: np.ndarray | None = None) -> dict:
    """Recall@k of each index in ``indexes`` (name → index) against exact inner-product search over ``vectors``.

    By default the queries are held out (leave-one-out): ``n_queries`` sampled rows, each with its own id
    removed from both the exact and the index's answer, so no query finds itself (self-queries always do,
    which makes their recall optimistic: the free hit of rank 1, and codes closest to their own vector).
    ``queries`` measures other vectors as given (e.g. indexed rows: the self-query figure). The exact answer
    is computed once for all indexes; ``vectors`` may be a memory map (read in chunks, pages released).

    Returns:
        name → mean fraction of the k results that score (exactly) at least the exact k-th best, i.e. recall of
        the exact top-k with float32 near-ties at rank k counted as hits; 1.0 if empty.
    """
    ids = np.asarray(ids, dtype=np.int64)
    held_out = queries is None
    k = min(k, len(vectors) - 1 if held_out else len(vectors))
    if k <= 0:
        return {name: 1.0 for name in indexes}
    if held_out:
        rows = np.sort(np.random.default_rng(seed).choice(len(vectors), min(n_queries, len(vectors)), replace=False))
        q, own = np.asarray(vectors[rows], np.float32), ids[rows]
        release_pages(vectors)
    else:
        q, own = np.ascontiguousarray(queries, np.float32), None
    extra = 1 if held_out else 0
    scores, positions = exact_topk(q, vectors, k + extra)
    if held_out:  # the k-th best score among the other rows
        scores = np.take_along_axis(scores, np.argsort(ids[positions] == own[:, None], axis=1, kind="stable"), 1)
    kth = scores[:, k - 1]
    gather, out = row_gather(vectors, ids) if _increasing(ids) else _sorted_gather(vectors, ids), {}
    for name, index in indexes.items():
        found = search(index, q, k + extra)[1]
        out[name] = tied_recall(q, found if own is None else without_own(found, own, k), gather, kth)
    return out


def _increasing(ids: np.ndarray) -> bool:
    return bool(len(ids) < 2 or (np.diff(ids) > 0).all())


def _sorted_gather(vectors, ids: np.ndarray):
    order = np.argsort(ids, kind="stable")
    return lambda wanted: np.asarray(vectors[order[np.searchsorted(ids[order], wanted)]], np.float32)


def measure_recall(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, k: int = 10,
                   n_queries: int = 200, seed: int = 0, queries: np.ndarray | None = None) -> float:
    """Recall@k of one index, on held-out queries unless ``queries`` is given (see :func:`measure_recalls`)."""
    return measure_recalls({"index": index}, vectors, ids, k, n_queries, seed, queries)["index"]


def save_index(index: faiss.Index, path: str | os.PathLike) -> None:
    """Write ``index`` (moved to CPU if needed) atomically: temp file in the same folder, then rename."""
    import faiss

    from indexer.store.atomic import atomic_path, os_error

    with atomic_path(Path(path)) as tmp, open(tmp, "wb") as fh:
        try:  # through Python's file: a failed write or close (a full disk) is an OSError, and FAISS prints nothing
            faiss.write_index(_to_cpu(index), faiss.PyCallbackIOWriter(fh.write))
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
        raise IndexError_(f"cannot read FAISS index {path}: {_first_line(exc)}") from None


def index_nbytes(index: faiss.Index) -> int:
    """Serialized size of ``index`` in bytes (what it occupies on disk and, roughly, in memory)."""
    import faiss

    return int(faiss.serialize_index(_to_cpu(index)).size)


def search(index: faiss.Index, queries: np.ndarray, k: int,
           allowed_ids: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` inner-product search, optionally restricted to ``allowed_ids``.

    A small allowed set (``|allowed|·d ≤ EXACT_FILTER_FLOATS``) is scored exactly from its reconstructed
    vectors. Otherwise the restriction happens inside FAISS (an ``IDSelectorBitmap`` in the index's own
    search parameters) for Flat, IVF and HNSW indexes, with IVF nprobe and HNSW efSearch scaled by
    ``ntotal / |allowed|`` so about as many allowed candidates are scanned as in an unfiltered search.
    Other indexes (GPU ones) over-fetch and filter, growing the fetch until ``k`` allowed results are
    found or the index is exhausted.

    Returns:
        ``(scores, ids)``, both (n_queries × k); missing results have id -1 and score -inf.

    Raises:
        QueryError: on a dimension mismatch or ``k < 1``.
    """
    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    if q.ndim != 2 or q.shape[1] != index.d:
        raise QueryError(f"query dimension {q.shape[-1]} does not match the index dimension {index.d}")
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}")
    allowed = None if allowed_ids is None else _sorted_unique(allowed_ids)
    if isinstance(index, CompositeIndex):
        return index.search(q, k, allowed)
    limit = min(index.ntotal, _GPU_MAX_K) if _is_gpu(index) else index.ntotal
    if limit == 0 or (allowed is not None and allowed.size == 0):
        return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
    if allowed is None:
        scores, found = index.search(q, min(k, limit))
        return (scores, found) if found.shape[1] == k and found.min() >= 0 else _pad(scores, found, k)
    if allowed.size * index.d <= EXACT_FILTER_FLOATS:
        exact = _search_few(index, q, k, allowed)
        if exact is not None:
            return exact
    params = filter_params(index, allowed)
    if params is not None:
        try:
            return _pad(*index.search(q, min(k, limit, allowed.size), params=params), k)
        except RuntimeError:  # this index type does not accept search parameters
            pass
    return _search_overfetch(index, q, k, allowed, limit)


class CompositeIndex:
    """An index made of FAISS indexes (searched through :func:`search`, read through :func:`reconstruct`).

    Subclasses set ``d`` and ``ntotal`` and implement ``search(q, k, allowed)`` (``allowed``: sorted unique
    ids or None) and ``reconstruct(ids)``.
    """

    d: int
    ntotal: int


class SegmentedIndex(CompositeIndex):
    """Indexes over disjoint, increasing id ranges (one per segment) searched as one: each part is searched
    with its share of the allowed ids and the results merged by score.

    Args:
        parts: the FAISS indexes, in id order. starts: the first id each part may hold.
    """

    def __init__(self, parts: list, starts: list[int]):
        self.parts, self.starts = list(parts), np.asarray(starts, np.int64)
        self.d = parts[0].d
        self.ntotal = int(sum(p.ntotal for p in parts))

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` over every part (``allowed``: sorted unique ids or None)."""
        scores, found = [], []
        bounds = np.r_[self.starts[1:], np.iinfo(np.int64).max]
        for part, lo, hi in zip(self.parts, self.starts, bounds):
            share = None if allowed is None else allowed[np.searchsorted(allowed, lo):np.searchsorted(allowed, hi)]
            if part.ntotal == 0 or (share is not None and share.size == 0):
                continue
            s, f = search(part, q, k, share)
            scores.append(s)
            found.append(f)
        if not scores:
            return _pad(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        s, f = np.hstack(scores), np.hstack(found)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return _pad(np.take_along_axis(s, top, 1), np.take_along_axis(f, top, 1), k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of ``ids``, each read from the part whose range holds it."""
        which = np.searchsorted(self.starts, ids, side="right") - 1
        out = np.zeros((len(ids), self.d), np.float32)
        for i in np.unique(which):
            mask = which == i
            out[mask] = reconstruct(self.parts[i], ids[mask])
        return out


def combine(parts: list, starts: list[int]):
    """One searchable index over the parts of several segments: the part itself when there is one, a single
    exact index when all are exact (``IndexIDMap2`` over ``IndexFlat``: their vectors are moved into one, so a
    search is one FAISS call), else a :class:`SegmentedIndex`."""
    import faiss

    if len(parts) == 1:
        return parts[0]
    if all(isinstance(_base(p), faiss.IndexFlat) and isinstance(faiss.downcast_index(p), faiss.IndexIDMap2)
           for p in parts):
        merged = faiss.IndexIDMap2(faiss.IndexFlatIP(parts[0].d))
        for part in parts:
            merged.merge_from(faiss.downcast_index(part))
        return merged
    return SegmentedIndex(parts, starts)


def remove_ids(index: faiss.Index, ids: np.ndarray) -> int:
    """Remove vectors by id; returns how many were removed.

    Raises:
        IndexError_: when the index kind cannot remove (HNSW, GPU): rebuild it instead.
    """
    import faiss

    sel = faiss.IDSelectorBatch(np.asarray(ids, dtype=np.int64).reshape(-1))
    try:
        return int(index.remove_ids(sel))
    except RuntimeError:
        raise IndexError_(f"{type(_base(index)).__name__} cannot remove vectors; rebuild the index") from None


def _search_overfetch(index, q, k, allowed, limit):
    fetch = min(limit, 4 * k)
    while True:
        scores, found = index.search(q, fetch)
        keep = np.isin(found, allowed) & (found >= 0)
        if fetch >= limit or (keep.sum(axis=1) >= k).all():
            break
        fetch = min(limit, fetch * 4)
    order = np.argsort(~keep, axis=1, kind="stable")[:, :k]  # allowed hits first, rank order kept
    kept = np.take_along_axis(keep, order, 1)
    s = np.where(kept, np.take_along_axis(scores, order, 1), -np.inf)
    return _pad(s.astype(np.float32), np.where(kept, np.take_along_axis(found, order, 1), -1), k)


def _pad(scores, found, k):
    found = np.asarray(found, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if (found < 0).any():
        scores = np.where(found >= 0, scores, -np.inf).astype(np.float32)
    missing = k - found.shape[1]
    if missing > 0:
        scores = np.hstack([scores, np.full((len(found), missing), -np.inf, np.float32)])
        found = np.hstack([found, np.full((len(found), missing), -1, np.int64)])
    return scores, found


def _sorted_unique(ids) -> np.ndarray:
    """Ids sorted without duplicates (np.unique is several times slower on already sorted input)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size > 1 and not (np.diff(ids) > 0).all():
        ids = np.sort(ids)
        ids = ids[np.concatenate(([True], np.diff(ids) != 0))]
    return ids


_DIRECT_MAP_LOCK = threading.Lock()


def reconstruct(index: faiss.Index, ids: np.ndarray) -> np.ndarray:
    """Stored vectors of ``ids`` (len(ids), d); IVF indexes get a hash-table direct map on first use.

    Raises:
        RuntimeError: an id is not in the index (FAISS's own error).
    """
    import faiss

    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if isinstance(index, CompositeIndex):
        return index.reconstruct(ids)
    try:
        return np.asarray(index.reconstruct_batch(ids), np.float32)
    except RuntimeError:
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is None:
            raise
        with _DIRECT_MAP_LOCK:  # another thread may be building it: wait, then look again
            if ivf.direct_map.type != faiss.DirectMap.Hashtable:
                ivf.set_direct_map_type(faiss.DirectMap.Hashtable)
        return np.asarray(index.reconstruct_batch(ids), np.float32)


def _search_few(index, q, k, allowed):
    """Exact top-k over a small allowed set; None when the index cannot reconstruct those ids."""
    try:
        vectors = reconstruct(index, allowed)
    except RuntimeError:
        return None
    scores = q @ vectors.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return _pad(np.take_along_axis(scores, top, 1), allowed[top], k)


def _selector(allowed: np.ndarray):
    """A bitmap over ids 0…max for dense ids (row ids: fast to build and test), else a hashed id set."""
    import faiss

    if allowed[-1] < BITMAP_BITS_PER_ID * allowed.size:
        mask = np.zeros(int(allowed[-1]) + 1, dtype=bool)
        mask[allowed] = True
        return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
    return faiss.IDSelectorBatch(allowed)


def filter_params(index, allowed: np.ndarray):
    """FAISS search parameters restricting ``index`` to ``allowed`` (sorted unique ids), with IVF nprobe and HNSW
    efSearch widened by ``ntotal / |allowed|``; None for indexes that take none (GPU ones, other kinds)."""
    import faiss

    if _is_gpu(index):
        return None
    base, sel = _base(index), _selector(allowed)
    widen = max(1.0, index.ntotal / allowed.size)
    if isinstance(base, faiss.IndexIVF):
        params = faiss.SearchParametersIVF(sel=sel, nprobe=min(base.nlist, math.ceil(base.nprobe * widen)))
    elif isinstance(base, faiss.IndexHNSW):
        ef = min(max(index.ntotal, 1), math.ceil(base.hnsw.efSearch * widen))
        params = faiss.SearchParametersHNSW(sel=sel, efSearch=ef)
    elif isinstance(base, faiss.IndexFlat):
        params = faiss.SearchParameters(sel=sel)
    else:
        return None
    return params  # FAISS's wrapper keeps `sel` alive with the parameters


def _check_vectors(vectors) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise IndexError_(f"vectors must be a 2-D array of rows, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if len(x) and not np.allclose(norms, 1.0, atol=1e-2):
        raise IndexError_(f"vectors must be L2-normalised (row norms range {norms.min():.3g}–{norms.max():.3g})")
    return x


def _first_line(exc: BaseException) -> str:
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
