"""Shared quantizers: once a collection holds more vectors of one kind than an exact index should scan, an
IVF-PQ index is trained on a sample and saved, immutable, under ``quantizers/``; every later segment stores only
its codes under it, and the segments written before it are back-filled under it (``indexer/store/backfill.py``),
so a live index is searched as one inverted index, as its compacted form is.

The first quantizer is trained when the collection outgrows exact search (``exact_max`` vectors). Below the full
threshold (39 vectors per list of ``nlist`` lists) it is provisional: an IVF-Flat with as many lists as its sample
can train (its lists hold the vectors, searched exactly, as fast as HNSW at that size); the commit that reaches the
threshold trains the full IVF-PQ one, which then stays. Retraining otherwise happens only on
request (``slidesearch compact --retrain``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from indexer.vectors.exact import release_pages
from indexer.vectors.device import gpu_enabled
from indexer.store.segments import SegmentFiles
from indexer.vectors import (FLAT_MAX_COUNT, MAX_NLIST, MIN_POINTS_PER_CENTROID, IndexChoice, choice_for_kind,
                                  choose_index, load_index, save_index, train_index, train_sample_size)

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
        exact_max: vectors of one kind kept exact (Flat) before the first quantizer (FLAT_MAX_COUNT: where
            :func:`indexer.vectors.choose_index` stops choosing exact search for a compacted collection).
    """

    nlist: int = 4096
    nprobe: int = 64
    names: tuple[str, ...] = ("patches", "subvectors", "slides", "slides_mean")
    coarse: str = "HNSW32"
    niter: int = 10
    exact_max: int = FLAT_MAX_COUNT

    def base_nlist(self, dim: int) -> int:
        """Lists of a first training for ``dim``-d vectors.

        >>> QuantizerPlan().base_nlist(512), QuantizerPlan().base_nlist(12_288)
        (4096, 512)
        """
        return self.nlist if dim <= 512 else max(1, 2 ** int(math.log2(self.nlist * math.sqrt(512 / dim))))

    def threshold(self, dim: int) -> int:
        """Vectors a collection needs before training: 39 per list (FAISS k-means warns below that)."""
        return MIN_POINTS_PER_CENTROID * self.base_nlist(dim)

    def start(self, dim: int) -> int:
        """Vectors a collection needs before its first (possibly provisional) quantizer.

        >>> QuantizerPlan().start(512), QuantizerPlan().start(4096), QuantizerPlan().threshold(512)
        (50001, 39936, 159744)
        """
        return min(self.exact_max + 1, self.threshold(dim))

    def provisional_nlist(self, count: int, dim: int) -> int:
        """Lists of a quantizer trained on ``count`` vectors below the threshold: the largest power of two with 39
        vectors per list (at most half the full ``base_nlist``).

        >>> QuantizerPlan().provisional_nlist(50_001, 512), QuantizerPlan().provisional_nlist(159_000, 512)
        (1024, 2048)
        """
        return max(1, min(self.base_nlist(dim) // 2, 2 ** int(math.log2(max(1, count // MIN_POINTS_PER_CENTROID)))))


PLAN = QuantizerPlan()


def plan_choice(count: int, dim: int, plan: QuantizerPlan | None = None, retrain: bool = False,
                budget: int | None = None):
    """The IVF configuration trained for ``count`` vectors of ``dim``.

    Below ``plan.threshold(dim)`` a provisional IVF-Flat (``plan.provisional_nlist`` lists; its lists hold the
    vectors themselves, so it searches exactly within the probed lists, needs no re-rank, and is as fast as HNSW
    at these sizes). Otherwise IVF-PQ with ``plan.base_nlist(dim)`` lists (a retrain: ≈ 4√n, a power of two up to
    MAX_NLIST with ≥ 39 points per list), PQ with the default sub-quantizers of
    :func:`indexer.vectors.choice_for_kind` (dim/8 up to 128: 64 bytes per 512-d vector); a retrain takes the
    largest of those whose codes for ``count`` vectors fit ``budget`` (None: 4 GiB), as
    :func:`indexer.vectors.choose_index` does (PQ32 at 10⁸: the exact re-rank makes up for coarser codes).

    >>> plan_choice(10**6, 512).describe(), plan_choice(10**8, 512, retrain=True).describe()
    ('IVF4096_HNSW32,PQ64x8', 'IVF16384_HNSW32,PQ32x8')
    >>> plan_choice(10**5, 12_288).describe(), plan_choice(60_000, 512).describe()
    ('IVF512_HNSW32,PQ128x8', 'IVF1024_HNSW32,Flat')
    """
    plan = plan or PLAN
    nlist = base = plan.base_nlist(dim)
    provisional = count < plan.threshold(dim)
    if provisional:
        nlist = plan.provisional_nlist(count, dim)
    elif retrain:
        want = 2 ** round(math.log2(max(1, 4 * math.sqrt(count))))
        nlist = max(base, min(want, MAX_NLIST, 2 ** int(math.log2(max(1, count // MIN_POINTS_PER_CENTROID)))))
    pq = choice_for_kind("ivf_pq", count, dim)
    if retrain and not provisional:
        fitted = choose_index(count, dim, budget)
        if fitted.kind == "ivf_pq":
            pq = choice_for_kind("ivf_pq", count, dim, m=min(pq.m, fitted.m))
    nprobe = min(nlist, max(plan.nprobe, round(plan.nprobe * math.sqrt(nlist / plan.nlist))))
    coarse = "" if gpu_enabled() else plan.coarse  # the GPU assigns by brute force over flat centroids
    if provisional:
        return IndexChoice("ivf_flat", nlist=nlist, nprobe=nprobe, coarse=coarse, niter=plan.niter)
    return IndexChoice("ivf_pq", nlist=nlist, m=pq.m, nbits=pq.nbits, nprobe=nprobe, coarse=coarse, niter=plan.niter)


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
        None while the collection is small enough for exact search (the segment then chooses its own index).

        The first segment to bring the collection (its live segments' vectors and these) past ``plan.exact_max``
        trains a quantizer on a seeded sample of all of them, provisional while they are fewer than
        ``plan.threshold``; the segment that reaches the threshold under a provisional one trains the full one.
        Each is saved as ``quantizers/<segment_id>-<name>.faiss`` and listed in ``trained``.
        """
        if name not in self.plan.names:
            return None
        dim = vectors.shape[1]
        count = len(vectors) + (0 if self.retrain else self._live_count(name))
        if name in self.table:
            if name in self.trained or count < self.plan.threshold(dim) or not self.provisional(name, dim):
                return self.load(name), self.table[name]
        elif count < self.plan.start(dim):
            return None
        sources = [] if self.retrain else self._live_arrays(name)
        choice = plan_choice(count, dim, self.plan, self.retrain, self.budget)
        sample = _sample(sources + [vectors], train_sample_size(count, choice.nlist, dim), seed=0)
        trained = train_index(sample, choice, self.use_gpu)
        relative = f"{self.paths.quantizers.name}/{segment_id}-{name}.faiss"
        self.paths.quantizers.mkdir(parents=True, exist_ok=True)
        save_index(trained, self.paths.root / relative)
        self.table[name], self._loaded[name] = relative, trained
        self.trained.append(name)
        return trained, relative

    def provisional(self, name: str, dim: int) -> bool:
        """Whether the live quantizer of ``name`` is a provisional one (IVF-Flat, trained below the threshold)."""
        return kind_of(self.load(name)) == "ivf_flat"

    def shared(self, name: str):
        """``(trained empty index, relative path)`` of the quantizer ``name`` has in this commit."""
        return self.load(name), self.table[name]

    def load(self, name: str):
        """The trained empty index of ``name`` (read once)."""
        if name not in self._loaded:
            self._loaded[name] = load_index(self.paths.root / self.table[name])
        return self._loaded[name]

    def _live_count(self, name: str) -> int:
        return sum(int(s["faiss"].get(name, {}).get("count", 0)) for s in self.version.segments)

    def _live_arrays(self, name: str) -> list[np.ndarray]:
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
    """FAISS factory string of an IVF index, e.g. ``IVF4096_HNSW32,PQ64x8`` or ``IVF1024_HNSW32,Flat``."""
    import faiss

    ivf = faiss.downcast_index(faiss.extract_index_ivf(index))
    coarse = faiss.downcast_index(ivf.quantizer)
    graph = f"_HNSW{coarse.hnsw.nb_neighbors(1)}" if isinstance(coarse, faiss.IndexHNSW) else ""
    codes = f"PQ{ivf.pq.M}x{ivf.pq.nbits}" if isinstance(ivf, faiss.IndexIVFPQ) else "Flat"
    return f"IVF{ivf.nlist}{graph},{codes}"


def kind_of(index) -> str:
    """``ivf_pq`` or ``ivf_flat``: what an index under a quantizer is."""
    import faiss

    return "ivf_pq" if isinstance(faiss.downcast_index(faiss.extract_index_ivf(index)), faiss.IndexIVFPQ) else "ivf_flat"
