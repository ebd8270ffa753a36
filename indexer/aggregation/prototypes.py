"""Prototype embeddings: text-tower prompt ensembles of a bank, optionally refined on a collection."""

from __future__ import annotations

from typing import Protocol

import numpy as np

from indexer.aggregation.aggregate import l2_normalize, similarity_chunks
from indexer.aggregation.bank import Bank


class TextEncoder(Protocol):
    """What prototype embedding needs from an encoder."""

    def encode_text(self, texts: list[str]) -> np.ndarray:
        """Return (len(texts), d) L2-normalised float32 embeddings."""
        ...


def embed_prototypes(bank: Bank, encoder: TextEncoder) -> np.ndarray:
    """Embed each prototype as the normalised mean of its normalised description embeddings.

    All descriptions go to the text tower in one call (prompt ensembling, as in CLIP zero-shot).

    Args:
        bank: The knowledge bank; row k of the result is ``bank.prototypes[k]``.
        encoder: Anything with ``encode_text(list[str]) -> (n, d)`` float array.

    Returns:
        (K, d) float32 array with unit rows.

    Raises:
        ValueError: The encoder returned the wrong number of rows or non-finite values.
    """
    texts = [text for proto in bank.prototypes for text in proto.descriptions]
    embedded = np.asarray(encoder.encode_text(texts), dtype=np.float32)
    if embedded.ndim != 2 or embedded.shape[0] != len(texts) or not np.isfinite(embedded).all():
        raise ValueError(f"encode_text returned {embedded.shape} for {len(texts)} texts "
                         "(expected (n, d), finite)")
    embedded = l2_normalize(embedded)
    owner = np.repeat(np.arange(len(bank.prototypes)), [len(p.descriptions) for p in bank.prototypes])
    sums = np.zeros((len(bank.prototypes), embedded.shape[1]), dtype=np.float32)
    np.add.at(sums, owner, embedded)
    return l2_normalize(sums)


def refine_prototypes(T: np.ndarray, patch_features, alpha: float, tau: float,
                      chunk: int = 65536) -> np.ndarray:
    """Pull text prototypes towards the collection's own patches (DESIGN §3).

    ``P_k = normalize(α·T_k + (1−α)·mean{x_i : argmax_j x_i·T_j = k})``; a prototype that no
    patch is assigned to keeps ``T_k``. This narrows the text–image modality gap while keeping
    each prototype anchored to its description. The hard argmax equals the argmax of
    ``softmax_k(x·T/τ)`` for every τ, so ``tau`` only has to be valid (> 0); it is taken so the
    call carries the same configuration as aggregation.

    Args:
        T: (K, d) unit text prototype embeddings.
        patch_features: (n, d) unit patch embeddings of the whole collection (array, memmap or
            h5py dataset; read in chunks).
        alpha: Weight of the text embedding in [0, 1]; 1 returns ``T`` unchanged.
        tau: Assignment temperature (> 0).
        chunk: Patches per chunk.

    Returns:
        (K, d) float32 array with unit rows.
    """
    if not 0.0 <= alpha <= 1.0 or not tau > 0:
        raise ValueError(f"need 0 <= alpha <= 1 and tau > 0, got alpha={alpha}, tau={tau}")
    T = l2_normalize(T)
    if alpha == 1.0:
        return T
    sums = np.zeros(T.shape, dtype=np.float64)
    counts = np.zeros(T.shape[0], dtype=np.int64)
    for _, block, sims in similarity_chunks(patch_features, T, chunk):
        assigned = sims.argmax(axis=1)[:, None] == np.arange(T.shape[0])
        sums += assigned.astype(np.float32).T @ block
        counts += assigned.sum(axis=0)
    means = sums / np.maximum(counts, 1)[:, None]
    refined = l2_normalize(alpha * T + (1.0 - alpha) * means)
    return np.where(counts[:, None] > 0, refined, T).astype(np.float32)
