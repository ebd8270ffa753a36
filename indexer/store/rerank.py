"""Searchable FAISS indexes of a snapshot: segment indexes with their shared quantizer attached, adjacent
segments under one quantizer merged into one index, and an exact re-rank of compressed (PQ) hits from the
stored vectors (memory-mapped float16 patch features, float32 slide and sub-vectors)."""

from __future__ import annotations

from typing import Callable

import numpy as np

from indexer.vectors.device import gpu_enabled, to_gpu
from indexer.store.quantizer import attach
from indexer.vectors import CompositeIndex, combine, load_index, pad_results
from indexer.vectors import search as search_index

RERANK_POOL = 512  # candidates a compressed index returns per query for the exact re-rank (RESULTS.md, issue 13)
QUERY_BLOCK = 64  # queries re-ranked together (bounds the candidate × query score matrix)


class RerankedIndex(CompositeIndex):
    """A compressed index whose top ``pool`` candidates are re-scored exactly.

    Args:
        inner: the compressed index (or a composite of segment indexes).
        gather: ids → their exact vectors (len(ids), d) as float32, in the order asked.
        pool: candidates fetched per query (at least ``k``).
        score: (ids, queries) → exact scores (len(queries), len(ids)); default ``queries @ gather(ids).T``
            (the store's scores its stored vectors a chunk at a time: ``Snapshot.scores``).
    """

    def __init__(self, inner, gather: Callable[[np.ndarray], np.ndarray], pool: int = RERANK_POOL,
                 score: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None):
        self.inner, self.gather, self.pool = inner, gather, pool
        self.score = score or (lambda ids, queries: queries @ gather(ids).T)
        self.d, self.ntotal = inner.d, inner.ntotal

    def search(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-``k`` among the inner index's top ``max(k, pool)`` (``allowed``: sorted unique ids or None)."""
        fetch = max(1, min(max(k, self.pool), self.inner.ntotal))
        _, cand = search_index(self.inner, q, fetch, allowed)
        scores = np.full(cand.shape, -np.inf, np.float32)
        for lo in range(0, len(q), QUERY_BLOCK):
            block = cand[lo:lo + QUERY_BLOCK]
            ids = np.unique(block[block >= 0])
            if ids.size == 0:
                continue
            exact = self.score(ids, q[lo:lo + QUERY_BLOCK])  # (queries, unique candidates)
            pos = np.searchsorted(ids, np.maximum(block, 0))
            s = np.take_along_axis(exact, pos, 1)
            scores[lo:lo + QUERY_BLOCK] = np.where(block >= 0, s, -np.inf)
        top = np.lexsort((cand, -scores), axis=1)[:, :k] if cand.size else np.zeros((len(q), 0), np.int64)
        return pad_results(np.take_along_axis(scores, top, 1), np.take_along_axis(cand, top, 1), k)

    def reconstruct(self, ids: np.ndarray) -> np.ndarray:
        """The exact stored vectors (not the lossy codes) of ``ids``."""
        return self.gather(np.asarray(ids, np.int64))


def open_index(snapshot, name: str):
    """One searchable index over FAISS index ``name`` of every live segment of ``snapshot``.

    Segment indexes saved as codes get their quantizer's centroids; runs of adjacent segments under the same
    quantizer are merged into one index in memory (their inverted lists concatenated: one coarse search per
    query, not one per segment); everything moves to the GPU when :func:`indexer.vectors.device.gpu_enabled`;
    and when any segment is compressed (PQ) the result re-ranks its hits exactly from the stored vectors.
    """
    files, starts = snapshot.faiss_parts(name)
    entries = [s["faiss"][name] for s in snapshot.version.segments]
    trained: dict[str, object] = {}
    parts = []
    for file, entry in zip(files, entries):
        index = load_index(file)
        if entry.get("quantizer"):
            source = entry["quantizer"]
            if source not in trained:
                trained[source] = load_index(snapshot.paths.root / source)
            index = attach(index, trained[source])
        parts.append(index)
    parts, starts = merge_shared(parts, starts, [e.get("quantizer") for e in entries])
    if gpu_enabled():
        parts = [to_gpu(p) or p for p in parts]
    index = combine(parts, starts)
    if any(e["kind"] == "ivf_pq" for e in entries):
        index = RerankedIndex(index, lambda ids: snapshot.vectors(name, ids),
                              score=lambda ids, queries: snapshot.scores(name, ids, queries))
    return index


def merge_shared(parts: list, starts: list[int], quantizers: list[str | None]) -> tuple[list, list[int]]:
    """Merge each run of adjacent parts under the same quantizer into its first part (ids kept, lists
    concatenated; the others are emptied); returns the remaining parts and their first ids."""
    out_parts, out_starts = [], []
    for i, (part, start) in enumerate(zip(parts, starts)):
        if i and quantizers[i] is not None and quantizers[i] == quantizers[i - 1]:
            out_parts[-1].merge_from(part, 0)
            continue
        out_parts.append(part)
        out_starts.append(start)
    return out_parts, out_starts
