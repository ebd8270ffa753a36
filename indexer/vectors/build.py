"""Building FAISS indexes: train, add in chunks (memory maps welcome), on the GPU when enabled; removal by id."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from indexer.errors import IndexError_
from indexer.vectors.choice import IndexChoice, ivf_params, train_sample_size
from indexer.vectors.device import base_index, to_cpu, to_gpu
from indexer.vectors.exact import iter_rows

if TYPE_CHECKING:  # faiss is imported lazily so `slidesearch --help` stays instant
    import faiss


HNSW_EF_CONSTRUCTION = 40
ADD_CHUNK = 65_536  # rows converted and added to an index at a time


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
    ids = check_ids(ids, n)
    if choice.kind in ("flat", "hnsw"):
        base = empty_index(dim, choice)
        index = faiss.IndexIDMap2(base)  # the Python wrapper keeps `base` alive as a referenced object
        add_chunks(index, vectors, ids, chunk)
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

    base = empty_index(sample.shape[1], choice)
    if choice.niter:
        faiss.extract_index_ivf(base).cp.niter = choice.niter
    work = (to_gpu(base) if use_gpu is not False else None) or base
    try:
        work.train(check_vectors(sample))
    except RuntimeError as exc:
        raise IndexError_(f"cannot train {choice.describe()} on {len(sample)} vectors: {first_line(exc)}") from None
    trained = to_cpu(work)
    faiss.downcast_index(trained).nprobe = choice.nprobe or ivf_params(len(sample))[1]
    return trained


def add_to_trained(trained: faiss.Index, vectors: np.ndarray, ids: np.ndarray, use_gpu: bool | None = None,
                   chunk: int = ADD_CHUNK) -> faiss.Index:
    """A copy of the trained empty IVF index ``trained`` holding ``vectors`` under ``ids`` (its codes only
    are new: lists, PQ codebooks and nprobe are the trained ones). Adds on the GPU when enabled; CPU result."""
    import faiss

    index = faiss.clone_index(trained)
    ids = check_ids(ids, len(vectors))
    work = to_gpu(index) if use_gpu is not False and len(ids) else None
    add_chunks(work if work is not None else index, vectors, ids, chunk)
    if work is not None:
        index = to_cpu(work)
        faiss.downcast_index(index).nprobe = faiss.downcast_index(trained).nprobe
    return index


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
        raise IndexError_(f"{type(base_index(index)).__name__} cannot remove vectors; rebuild the index") from None


def empty_index(dim: int, choice: IndexChoice):
    import faiss

    base = faiss.index_factory(dim, choice.describe(), faiss.METRIC_INNER_PRODUCT)
    if choice.kind == "ivf_pq":
        faiss.downcast_index(base).do_polysemous_training = False  # polysemous codes are unused and slow to train
    if choice.kind == "hnsw":
        base.hnsw.efConstruction, base.hnsw.efSearch = HNSW_EF_CONSTRUCTION, choice.ef_search
    return base


def check_ids(ids, n: int) -> np.ndarray:
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if len(ids) != n or len(np.unique(ids)) != len(ids) or (ids < 0).any():
        raise IndexError_(f"need {n} distinct non-negative ids, got {len(ids)} ({len(np.unique(ids))} distinct)")
    return ids


def add_chunks(index, vectors, ids, chunk: int) -> None:
    for start, block in iter_rows(vectors, chunk):  # memory-mapped pages released after each block
        index.add_with_ids(check_vectors(block), ids[start:start + len(block)])


def check_vectors(vectors) -> np.ndarray:
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    if x.ndim != 2 or x.shape[1] == 0:
        raise IndexError_(f"vectors must be a 2-D array of rows, got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1)
    if len(x) and not np.allclose(norms, 1.0, atol=1e-2):
        raise IndexError_(f"vectors must be L2-normalised (row norms range {norms.min():.3g}–{norms.max():.3g})")
    return x


def first_line(exc: BaseException) -> str:
    """The first non-empty line of a FAISS error (its cause), for one-line messages."""
    return next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
