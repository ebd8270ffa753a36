"""Fuse: every way the query pipeline combines evidence into one slide score, in one place.

- image evidence of a text query: ``score = W_PROTO·S_proto + W_PATCH·S_patch + W_MASS·S_mass`` (``fuse``);
- image and report rankings: reciprocal rank fusion ``Σ_lists 1 / (RRF_K + rank)``, a slide whose report
  contradicts the query losing one top-rank share (``rrf``);
- the final order of fused slide scores (``ranked``).
"""

from __future__ import annotations

import numpy as np

from retrieval.query.arrays import lookup

W_PROTO, W_PATCH, W_MASS = 0.4, 0.4, 0.2
RRF_K = 60


def fuse(candidates: np.ndarray, proto: tuple[np.ndarray, np.ndarray], patch: tuple[np.ndarray, np.ndarray],
         abundance: np.ndarray) -> np.ndarray:
    """W_PROTO·S_proto + W_PATCH·S_patch + W_MASS·S_mass for each candidate slide; a slide missing from the
    prototype or the patch list takes that list's lowest value.

    >>> fuse(np.array([1, 2]), (np.array([1]), np.array([0.9])), (np.array([1, 2]), np.array([0.5, 0.7])),
    ...      np.array([0.6, 0.1])).round(6).tolist()
    [0.68, 0.66]
    """
    proto_score = lookup(candidates, *proto, proto[1].min() if len(proto[1]) else 0.0)
    patch_score = lookup(candidates, *patch, patch[1].min() if len(patch[1]) else 0.0)
    return W_PROTO * proto_score + W_PATCH * patch_score + W_MASS * abundance


def rrf(lists: dict[str, dict[int, float]], contradicted: set[int]) -> dict[int, float]:
    """Reciprocal rank fusion of scored slide rows (each list best first; equal scores share the better rank); a
    contradicted slide loses one top-rank share.

    >>> rrf({"a": {1: 0.9, 2: 0.5}, "b": {2: 1.0}}, {1})
    {1: 0.0, 2: 0.03252247488101534}
    >>> fused = rrf({"image": {1: 0.9, 2: 0.8, 3: 0.7}, "dense": {3: 1.0, 2: 1.0, 1: 0.2}}, set())
    >>> fused[2] > fused[1] == fused[3]  # 2 and 3 tie in the dense list
    True
    """
    score: dict[int, float] = {}
    for scored in lists.values():
        rank, previous = 0, None
        for position, (row, value) in enumerate(scored.items(), 1):
            if value != previous:
                rank, previous = position, value
            score[row] = score.get(row, 0.0) + 1.0 / (RRF_K + rank)
    for row in contradicted:
        score[row] = score.get(row, 0.0) - 1.0 / (RRF_K + 1)
    return score


def mean_of_lists(lists: dict[str, dict[int, float]]) -> tuple[dict[int, float], dict[int, dict[str, float]]]:
    """Each slide's mean score over several scored lists (a slide missing from a list takes that list's lowest
    score), and its (rounded) score in each list.

    >>> mean_of_lists({"a": {1: 0.9, 2: 0.5}, "b": {2: 0.7}})
    ({1: 0.8, 2: 0.6}, {1: {'a': 0.9, 'b': 0.7}, 2: {'a': 0.5, 'b': 0.7}})
    """
    totals: dict[int, list[float]] = {}
    per: dict[int, dict[str, float]] = {}
    for i, (name, seen) in enumerate(lists.items()):
        floor = min(seen.values(), default=0.0)
        for row in set(totals) | set(seen):
            totals.setdefault(row, [floor] * i).append(seen.get(row, floor))
            per.setdefault(row, {})[name] = round(seen.get(row, floor), 4)
    return {row: float(np.mean(v)) for row, v in totals.items()}, per


def ranked(score: dict[int, float], k: int) -> list[int]:
    """The k best slide rows of fused scores (equal to 9 decimals: the lower row first).

    >>> ranked({3: 0.5, 1: 0.5, 2: 0.9}, 2)
    [2, 1]
    """
    return sorted(score, key=lambda r: (-round(score[r], 9), r))[:k]
