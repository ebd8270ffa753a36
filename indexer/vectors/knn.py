"""Search: top-k inner product, filtered to allowed ids (exact, FAISS selectors, or over-fetch), over one index
or a composite of segments; reconstruction of stored vectors."""

from __future__ import annotations

import math
import threading
from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import QueryError
from indexer.vectors.device import base_index, is_gpu

if TYPE_CHECKING:  # faiss is imported lazily so `slidesearch --help` stays instant
    import faiss


GPU_MAX_K = 2048
BITMAP_BITS_PER_ID = 128  # a bitmap is used while it costs at most ~16 bytes per allowed id
EXACT_FILTER_FLOATS = 2**18  # allowed-set size × dim under which filtered search is exact
_DIRECT_MAP_LOCK = threading.Lock()


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
    allowed = None if allowed_ids is None else sorted_unique(allowed_ids)
    if isinstance(index, CompositeIndex):
        return index.search(q, k, allowed)
    limit = min(index.ntotal, GPU_MAX_K) if is_gpu(index) else index.ntotal
    if limit == 0 or (allowed is not None and allowed.size == 0):
        return pad_results(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
    if allowed is None:
        scores, found = index.search(q, min(k, limit))
        return (scores, found) if found.shape[1] == k and found.min() >= 0 else pad_results(scores, found, k)
    if allowed.size * index.d <= EXACT_FILTER_FLOATS:
        exact = _search_few(index, q, k, allowed)
        if exact is not None:
            return exact
    params = filter_params(index, allowed)
    if params is not None:
        try:
            return pad_results(*index.search(q, min(k, limit, allowed.size), params=params), k)
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
            return pad_results(np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64), k)
        s, f = np.hstack(scores), np.hstack(found)
        top = np.argsort(-s, axis=1, kind="stable")[:, :k]
        return pad_results(np.take_along_axis(s, top, 1), np.take_along_axis(f, top, 1), k)

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
    if all(isinstance(base_index(p), faiss.IndexFlat) and isinstance(faiss.downcast_index(p), faiss.IndexIDMap2)
           for p in parts):
        merged = faiss.IndexIDMap2(faiss.IndexFlatIP(parts[0].d))
        for part in parts:
            merged.merge_from(faiss.downcast_index(part))
        return merged
    return SegmentedIndex(parts, starts)


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
    return pad_results(np.take_along_axis(scores, top, 1), allowed[top], k)


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
    return pad_results(s.astype(np.float32), np.where(kept, np.take_along_axis(found, order, 1), -1), k)


def filter_params(index, allowed: np.ndarray):
    """FAISS search parameters restricting ``index`` to ``allowed`` (sorted unique ids), with IVF nprobe and HNSW
    efSearch widened by ``ntotal / |allowed|``; None for indexes that take none (GPU ones, other kinds)."""
    import faiss

    if is_gpu(index):
        return None
    base, sel = base_index(index), id_selector(allowed)
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


def id_selector(allowed: np.ndarray):
    """A bitmap over ids 0…max for dense ids (row ids: fast to build and test), else a hashed id set."""
    import faiss

    if allowed[-1] < BITMAP_BITS_PER_ID * allowed.size:
        mask = np.zeros(int(allowed[-1]) + 1, dtype=bool)
        mask[allowed] = True
        return faiss.IDSelectorBitmap(np.packbits(mask, bitorder="little"))
    return faiss.IDSelectorBatch(allowed)


def pad_results(scores, found, k):
    found = np.asarray(found, dtype=np.int64)
    scores = np.asarray(scores, dtype=np.float32)
    if (found < 0).any():
        scores = np.where(found >= 0, scores, -np.inf).astype(np.float32)
    missing = k - found.shape[1]
    if missing > 0:
        scores = np.hstack([scores, np.full((len(found), missing), -np.inf, np.float32)])
        found = np.hstack([found, np.full((len(found), missing), -1, np.int64)])
    return scores, found


def sorted_unique(ids) -> np.ndarray:
    """Ids sorted without duplicates (np.unique is several times slower on already sorted input)."""
    ids = np.asarray(ids, dtype=np.int64).reshape(-1)
    if ids.size > 1 and not (np.diff(ids) > 0).all():
        ids = np.sort(ids)
        ids = ids[np.concatenate(([True], np.diff(ids) != 0))]
    return ids

