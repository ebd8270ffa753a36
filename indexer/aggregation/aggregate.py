"""ProAlign-style slide embedding: prototype masses, attention sub-vectors, slide vector, mean pool."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True)
class AggregationConfig:
    """How patches are pooled into a slide embedding (DESIGN §3).

    Attributes:
        tau: Softmax temperature on cosine similarities, used both for the patch→prototype
            assignment (``softmax_k``) and for the per-prototype attention over patches
            (``softmax_i``). 0.05 (logit scale 20) keeps the assignment sharp when a patch's
            cosine to its prototype exceeds the others by ≥ 0.1, while attention still spreads
            over the many patches of one morphology; CLIP's trained 0.01 (scale 100) would make
            attention over 10^5 patches collapse onto a handful of them.
        alpha: Prototype refinement weight on the text embedding (1 = text only, no refinement;
            see :func:`indexer.aggregation.prototypes.refine_prototypes`). Recorded in the manifest.
        chunk: Patches per chunk; memory is O(chunk·(d+K)) beyond the inputs and outputs.
    """

    tau: float = 0.05
    alpha: float = 1.0
    chunk: int = 8192

    def __post_init__(self) -> None:
        if not self.tau > 0:
            raise ValueError(f"tau must be > 0, got {self.tau}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ValueError(f"alpha must be in [0, 1], got {self.alpha}")
        if self.chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {self.chunk}")


@dataclass(frozen=True, eq=False)
class SlideEmbedding:
    """One slide's ProAlign embedding, mean-pool baseline and diagnostics.

    ``entropy`` is the assignment entropy ``-Σ π_k ln π_k / ln K`` in [0, 1] (1 = uniform
    composition, 0 = every patch on one prototype, i.e. prototype collapse); ``max_mass`` is the
    largest ``π_k``. An empty slide (no patches) has all-zero vectors, ``empty=True`` and no NaN.
    """

    slide_vector: np.ndarray
    subvectors: np.ndarray
    mass: np.ndarray
    mean_vector: np.ndarray
    patch_proto: np.ndarray
    patch_proto_sim: np.ndarray
    entropy: float
    max_mass: float
    n_patches: int
    empty: bool


def l2_normalize(vectors: np.ndarray, axis: int = -1) -> np.ndarray:
    """Scale to unit L2 norm along ``axis`` (float32); all-zero vectors stay zero.

    >>> l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]])).tolist()
    [[0.6000000238418579, 0.800000011920929], [0.0, 0.0]]
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=axis, keepdims=True)
    return vectors / np.maximum(norms, _EPS)


def similarity_chunks(X, P: np.ndarray, chunk: int) -> Iterator[tuple[slice, np.ndarray, np.ndarray]]:
    """Yield ``(rows, X[rows] as float32, X[rows] @ Pᵀ)`` over consecutive patch chunks.

    Args:
        X: (n, d) patch embeddings: any array supporting ``shape`` and row slicing (NumPy array,
            memmap, h5py dataset), float16 or float32.
        P: (K, d) prototype embeddings.
        chunk: Rows per chunk.

    Raises:
        ValueError: On a dimension mismatch or non-finite patch features.
    """
    P = np.asarray(P, dtype=np.float32)
    if len(X.shape) != 2 or P.ndim != 2 or X.shape[1] != P.shape[1] or P.shape[0] == 0:
        raise ValueError(f"patch features {tuple(X.shape)} and prototypes {P.shape} must be (n, d) "
                         "and (K>0, d) with the same d")
    for start in range(0, X.shape[0], chunk):
        rows = slice(start, min(start + chunk, X.shape[0]))
        block = np.asarray(X[rows], dtype=np.float32)
        sims = block @ P.T
        if not np.isfinite(sims).all():
            raise ValueError(f"patch features {rows.start}-{rows.stop} contain NaN or inf")
        yield rows, block, sims


def aggregate_slide(X, P: np.ndarray, config: AggregationConfig = AggregationConfig()) -> SlideEmbedding:
    """Pool a slide's patch embeddings into its ProAlign embedding, in one streaming pass.

    ``π_k = mean_i softmax_k(x_i·P_k/τ)``; ``ẑ_k = normalize(Σ_i softmax_i(x_i·P_k/τ) x_i)``
    (online softmax over chunks, so memory does not grow with n);
    ``s = normalize(concat_k √π_k ẑ_k)``; baseline ``normalize(mean_i x_i)``. Results do not
    depend on patch order or chunk size beyond float rounding.

    Args:
        X: (n, d) unit-norm patch embeddings (float16 or float32; memmap or h5py is fine).
        P: (K, d) unit-norm prototype embeddings.
        config: Temperature and chunk size.

    Returns:
        The slide embedding; ``empty=True`` with zero vectors when ``n == 0``.
    """
    X = X if hasattr(X, "shape") else np.asarray(X, dtype=np.float32)
    P = np.asarray(P, dtype=np.float32)
    n, (K, d) = X.shape[0], P.shape
    proto = np.zeros(n, dtype=np.int32)
    proto_sim = np.zeros(n, dtype=np.float32)
    mass_sum = np.zeros(K, dtype=np.float64)
    patch_sum = np.zeros(d, dtype=np.float64)
    run_max = np.full(K, -np.inf, dtype=np.float32)   # online softmax over patches, per prototype
    weighted = np.zeros((K, d), dtype=np.float32)     # Σ_i exp(logit_ik - run_max_k) x_i
    for rows, block, sims in similarity_chunks(X, P, config.chunk):
        best = sims.argmax(axis=1)
        proto[rows], proto_sim[rows] = best, sims[np.arange(best.size), best]
        logits = sims / np.float32(config.tau)
        assign = np.exp(logits - logits.max(axis=1, keepdims=True))
        mass_sum += (assign / assign.sum(axis=1, keepdims=True)).sum(axis=0, dtype=np.float64)
        new_max = np.maximum(run_max, logits.max(axis=0))
        weighted *= np.exp(run_max - new_max)[:, None]
        weighted += np.exp(logits - new_max).T @ block
        run_max = new_max
        patch_sum += block.sum(axis=0, dtype=np.float64)
    if n == 0:
        zeros = np.zeros(K, dtype=np.float32)
        return SlideEmbedding(
            slide_vector=np.zeros(K * d, dtype=np.float32), subvectors=np.zeros((K, d), np.float32),
            mass=zeros, mean_vector=np.zeros(d, dtype=np.float32), patch_proto=proto,
            patch_proto_sim=proto_sim, entropy=0.0, max_mass=0.0, n_patches=0, empty=True,
        )
    mass = (mass_sum / n).astype(np.float32)
    subvectors = l2_normalize(weighted)
    nonzero = mass[mass > 0].astype(np.float64)
    entropy = float(-(nonzero * np.log(nonzero)).sum() / np.log(K)) if K > 1 else 0.0
    return SlideEmbedding(
        slide_vector=l2_normalize((np.sqrt(mass)[:, None] * subvectors).reshape(-1)),
        subvectors=subvectors, mass=mass, mean_vector=l2_normalize(patch_sum), patch_proto=proto,
        patch_proto_sim=proto_sim, entropy=min(max(entropy, 0.0), 1.0), max_mass=float(mass.max()),
        n_patches=int(n), empty=False,
    )
