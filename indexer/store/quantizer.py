"""Trained-once quantizers: once a collection holds enough vectors of one kind, an IVF-PQ index is trained
once on a sample and saved, immutable, under ``quantizers/``; every later segment stores only its codes
under it. Retraining happens only on request (``slidesearch compact --retrain``)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.exact import release_pages

if TYPE_CHECKING:
    import faiss

    from indexer.store.layout import IndexPaths
    from indexer.store.versions import Version


@dataclass(frozen=True)
class QuantizerPlan:
    """Which FAISS indexes get a trained-once quantizer, and its shape.

    Attributes:
        nlist: inverted lists of a first training at d ≤ 512 (4,096: trainable on a few CPU cores in minutes,
            2,400 vectors per list at 10⁷). Wider vectors get fewer (k-means costs ∝ nlist²·d: the largest
            power of two ≤ nlist·√(512/d), so 512 for 12,288-d slide vectors); a retrain picks ≈ 4√n lists
            within [that, MAX_NLIST].
        nprobe: lists scanned per query at ``nlist`` (1.6 % of 4,096; the exact re-rank recovers what PQ loses).
        names: the FAISS indexes it applies to.
        coarse: the coarse quantizer over the centroids on CPU (an HNSW graph: adding 10⁷ vectors assigns each
            with ~4× fewer distance computations than scanning 4,096 centroids); flat on GPU.
        niter: k-means iterations of the training (10: the centroids barely move after that; 25 costs 2.5×).
    """

    nlist: int = 4096
    nprobe: int = 64
    names: tuple[str, ...] = ("patches", "subvectors", "slides", "slides_mean")
    coarse: str = "HNSW32"
    niter: int = 10

    def base_nlist(self, dim: int) -> int:
        """Lists of a first training for ``dim``-d vectors.

        >>> QuantizerPlan().base_nlist(512), QuantizerPlan().base_nlist(12_288)
        (4096, 512)
        """
        return self.nlist if dim <= 512 else max(1, 2 ** int(math.log2(self.nlist * math.sqrt(512 / dim))))

    def threshold(self, dim: int) -> int:
        """Vectors a collection needs before training: 39 per list (FAISS k-means warns below that)."""
        from indexer.vector_index import MIN_POINTS_PER_CENTROID

        return MIN_POINTS_PER_CENTROID * self.base_nlist(dim)


PLAN = QuantizerPlan()


def plan_choice(count: int, dim: int, plan: QuantizerPlan | None = None, retrain: bool = False,
                budget: int | None = None):
    """The IVF-PQ configuration trained for ``count`` vectors of ``dim``: ``plan.base_nlist(dim)`` lists (a
    retrain: ≈ 4√n, a power of two up to MAX_NLIST with ≥ 39 points per list), PQ with the default sub-quantizers
    of :func:`indexer.vector_index.choice_for_kind` (dim/8 up to 128: 64 bytes per 512-d vector); a retrain
    takes the largest of those whose codes for ``count`` vectors fit ``budget`` (None: 4 GiB), as
    :func:`indexer.vector_index.choose_index` does (PQ32 at 10⁸: the exact re-rank makes up for coarser codes).

    >>> plan_choice(10**6, 512).describe(), plan_choice(10**8, 512, retrain=True).describe()
    ('IVF4096_HNSW32,PQ64x8', 'IVF16384_HNSW32,PQ32x8')
    >>> plan_choice(10**5, 12_288).describe()
    'IVF512_HNSW32,PQ128x8'
    """
    from indexer.vector_index import (MAX_NLIST, MIN_POINTS_PER_CENTROID, IndexChoice, choice_for_kind, choose_index,
                                      gpu_enabled)

    plan = plan or PLAN
    nlist = base = plan.base_nlist(dim)
    if retrain:
        want = 2 ** round(math.log2(max(1, 4 * math.sqrt(count))))
        nlist = max(base, min(want, MAX_NLIST, 2 ** int(math.log2(max(1, count // MIN_POINTS_PER_CENTROID)))))
    pq = choice_for_kind("ivf_pq", count, dim)
    if retrain:
        fitted = choose_index(count, dim, budget)
        if fitted.kind == "ivf_pq":
            pq = choice_for_kind("ivf_pq", count, dim, m=min(pq.m, fitted.m))
    nprobe = max(plan.nprobe, round(plan.nprobe * math.sqrt(nlist / plan.nlist)))
    coarse = "" if gpu_enabled() else plan.coarse  # the GPU assigns by brute force over flat centroids
    return IndexChoice("ivf_pq", nlist=nlist, m=pq.m, nbits=pq.nbits, nprobe=min(nlist, nprobe), coarse=coarse,
                       niter=plan.niter)


class Quantizers:
    """The quantizers one commit writes segments under (a writer makes one per commit).

    Args:
        paths: the index's paths. version: the live version (its ``quantizers`` and segments).
        plan: which indexes and what shape. retrain: ignore the live quantizers and train new ones from the
            segment being written alone (compaction of every segment into one).
        use_gpu: None = train and add on the GPU when FAISS sees one.
        budget: the index memory budget a retrain fits its codes to (None: 4 GiB).
    """

    def __init__(self, paths: IndexPaths, version: Version, plan: QuantizerPlan | None = None,
                 retrain: bool = False, use_gpu: bool | None = None, budget: int | None = None):
        self.paths, self.version, self.plan = paths, version, plan or PLAN
        self.retrain, self.use_gpu, self.budget = retrain, use_gpu, budget
        self.table: dict[str, str] = {} if retrain else dict(version.quantizers)  # name → relative path
        self.trained: list[str] = []  # names trained by this commit
        self._loaded: dict[str, faiss.Index] = {}

    def for_segment(self, name: str, segment_id: str, vectors: np.ndarray):
        """``(trained empty index, relative path)`` that segment ``segment_id``'s ``name`` vectors go under, or
        None while the collection is below the threshold (the segment then chooses its own index).

        The first segment to reach ``plan.threshold`` vectors (counting the live segments' too) trains it on a
        seeded sample of all of them and saves it as ``quantizers/<segment_id>-<name>.faiss``.
        """
        from indexer import vector_index as vi

        if name not in self.plan.names:
            return None
        if name in self.table:
            return self.load(name), self.table[name]
        sources = [] if self.retrain else self._live_arrays(name)
        count = len(vectors) + sum(len(a) for a in sources)
        if count < self.plan.threshold(vectors.shape[1]):
            return None
        choice = plan_choice(count, vectors.shape[1], self.plan, self.retrain, self.budget)
        sample = _sample(sources + [vectors], vi.train_sample_size(count, choice.nlist, vectors.shape[1]), seed=0)
        trained = vi.train_index(sample, choice, self.use_gpu)
        relative = f"{self.paths.quantizers.name}/{segment_id}-{name}.faiss"
        self.paths.quantizers.mkdir(parents=True, exist_ok=True)
        vi.save_index(trained, self.paths.root / relative)
        self.table[name], self._loaded[name] = relative, trained
        self.trained.append(name)
        return trained, relative

    def load(self, name: str):
        """The trained empty index of ``name`` (read once)."""
        if name not in self._loaded:
            from indexer import vector_index as vi

            self._loaded[name] = vi.load_index(self.paths.root / self.table[name])
        return self._loaded[name]

    def _live_arrays(self, name: str) -> list[np.ndarray]:
        from indexer.store.segments import SegmentFiles

        return [SegmentFiles(self.paths.segment(s["id"])).array(name) for s in self.version.segments
                if s["faiss"].get(name, {}).get("count", 0)]


def _sample(arrays: list[np.ndarray], n: int, seed: int) -> np.ndarray:
    """``n`` rows drawn uniformly without replacement from the concatenation of ``arrays`` (float32)."""
    sizes = np.array([len(a) for a in arrays], np.int64)
    picks = np.sort(np.random.default_rng(seed).choice(int(sizes.sum()), min(n, int(sizes.sum())), replace=False))
    bounds = np.r_[0, np.cumsum(sizes)]
    parts = []
    for array, lo, hi in zip(arrays, bounds[:-1], bounds[1:]):
        rows = picks[(picks >= lo) & (picks < hi)] - lo
        if len(rows):
            parts.append(np.asarray(array[rows], np.float32))
            release_pages(array)
    return np.concatenate(parts)


def save_codes(index, path: Path) -> None:
    """Save an IVF index without its coarse centroids (they live once in the quantizer file): only the lists,
    codes, ids and PQ codebook go to ``path``. Other indexes are saved whole."""
    import faiss

    from indexer.vector_index import save_index

    ivf = faiss.try_extract_index_ivf(index)
    if ivf is None:
        save_index(index, path)
        return
    real, stub = ivf.quantizer, faiss.IndexFlatIP(ivf.d)
    ivf.quantizer = stub
    try:
        save_index(index, path)
    finally:
        ivf.quantizer = real


def attach(index, trained):
    """Give a segment index saved by :func:`save_codes` the coarse centroids of its quantizer ``trained``."""
    import faiss

    ivf, source = faiss.try_extract_index_ivf(index), faiss.extract_index_ivf(trained)
    if ivf is None or ivf.quantizer.ntotal == ivf.nlist:
        return index
    ivf.own_fields = False  # the stub is leaked (a few bytes); the shared centroids belong to `trained`
    ivf.quantizer = source.quantizer
    index.referenced_objects = [trained]  # keeps the centroids alive as long as the segment index
    return index


def describe(index) -> str:
    """FAISS factory string of an IVF-PQ index, e.g. ``IVF4096_HNSW32,PQ64x8``."""
    import faiss

    ivf = faiss.extract_index_ivf(index)
    pq, coarse = faiss.downcast_index(ivf).pq, faiss.downcast_index(ivf.quantizer)
    graph = f"_HNSW{coarse.hnsw.nb_neighbors(1)}" if isinstance(coarse, faiss.IndexHNSW) else ""
    return f"IVF{ivf.nlist}{graph},PQ{pq.M}x{pq.nbits}"
