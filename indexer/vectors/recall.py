"""Recall@k of indexes against exact search, on held-out or given queries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from indexer.vectors.exact import exact_topk, release_pages, row_gather, tied_recall, without_own
from indexer.vectors.knn import search

if TYPE_CHECKING:  # faiss is imported lazily so `slidesearch --help` stays instant
    import faiss


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


def measure_recall(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray, k: int = 10,
                   n_queries: int = 200, seed: int = 0, queries: np.ndarray | None = None) -> float:
    """Recall@k of one index, on held-out queries unless ``queries`` is given (see :func:`measure_recalls`)."""
    return measure_recalls({"index": index}, vectors, ids, k, n_queries, seed, queries)["index"]


def _increasing(ids: np.ndarray) -> bool:
    return bool(len(ids) < 2 or (np.diff(ids) > 0).all())


def _sorted_gather(vectors, ids: np.ndarray):
    order = np.argsort(ids, kind="stable")
    return lambda wanted: np.asarray(vectors[order[np.searchsorted(ids[order], wanted)]], np.float32)
