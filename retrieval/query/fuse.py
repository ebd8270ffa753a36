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
