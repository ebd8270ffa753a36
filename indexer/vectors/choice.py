"""Index choice: which FAISS index (and parameters) fits a collection under a memory budget (pure functions)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from indexer.errors import IndexError_


KINDS = ("flat", "ivf_flat", "hnsw", "ivf_pq")
FLAT_MAX_COUNT = 50_000
HNSW_MAX_COUNT = 200_000
DEFAULT_MEMORY_BUDGET_BYTES = 4 * 2**30
MIN_POINTS_PER_CENTROID = 39  # FAISS k-means warns below this
TRAIN_SAMPLE = 100_000
TRAIN_BYTES = 2**30
MAX_NLIST = 16_384  # k-means beyond this many lists is GPU work (hours on a few CPU cores)


@dataclass(frozen=True)
class IndexChoice:
    """A FAISS index configuration (inner-product metric; vectors are unit rows).

    Attributes:
        kind: ``"flat"``, ``"ivf_flat"``, ``"hnsw"`` or ``"ivf_pq"``.
        nlist: IVF inverted lists; m: PQ sub-quantizers; nbits: bits per PQ code.
        hnsw_m: HNSW neighbours per node; ef_search: HNSW search breadth; nprobe: IVF lists probed.
        coarse: IVF coarse quantizer other than exact search over the centroids (``"HNSW32"``: a graph, ~4×
            fewer distance computations to assign a vector at 4,096 lists). niter: k-means iterations (0: FAISS's 25).
    """

    kind: str
    nlist: int = 0
    m: int = 0
    nbits: int = 8
    hnsw_m: int = 32
    ef_search: int = 64
    nprobe: int = 0
    coarse: str = ""
    niter: int = 0

    def describe(self) -> str:
        """FAISS factory string of the base index, e.g. ``"IVF1265,PQ64x8"``.

        >>> IndexChoice("ivf_pq", nlist=1024, m=64, nprobe=32).describe()
        'IVF1024,PQ64x8'
        >>> IndexChoice("hnsw").describe()
        'HNSW32'
        """
        if self.kind == "flat":
            return "Flat"
        if self.kind == "hnsw":
            return f"HNSW{self.hnsw_m}"
        ivf = f"IVF{self.nlist}" + (f"_{self.coarse}" if self.coarse else "")
        if self.kind == "ivf_flat":
            return f"{ivf},Flat"
        if self.kind == "ivf_pq":
            return f"{ivf},PQ{self.m}x{self.nbits}"
        raise IndexError_(f"unknown index kind {self.kind!r}; known: {', '.join(KINDS)}")


def ivf_params(count: int) -> tuple[int, int]:
    """(nlist, nprobe) for ``count`` vectors: nlist ≈ 4√n (≥ 39 points per list, ≤ MAX_NLIST), nprobe ≈ √nlist
    (≥ 8).

    >>> ivf_params(100_000), ivf_params(10**8)
    ((1265, 36), (16384, 128))
    """
    nlist = max(1, min(round(4 * math.sqrt(count)), count // MIN_POINTS_PER_CENTROID, MAX_NLIST))
    return nlist, min(nlist, max(8, math.ceil(math.sqrt(nlist))))


def train_sample_size(count: int, nlist: int, dim: int = 0) -> int:
    """Rows IVF training uses: ``min(count, max(40·nlist, 100,000))`` (≥ 39 per centroid, no FAISS warning), the
    100,000 lowered for wide vectors so the float32 sample stays within TRAIN_BYTES (1 GiB).

    >>> train_sample_size(10**7, 4096, 512), train_sample_size(10**5, 512, 12_288)
    (163840, 21845)
    """
    wide = TRAIN_SAMPLE if dim <= 0 else min(TRAIN_SAMPLE, TRAIN_BYTES // (4 * dim))
    return min(count, max(wide, 40 * nlist))


def estimated_bytes(kind: str, count: int, dim: int, m: int = 0, hnsw_m: int = 32) -> int:
    """Approximate resident size of an index of ``kind`` (vectors, graph links or codes, 8-byte ids, centroids).

    Building an IVF index also holds its float32 training sample for a while (:func:`train_sample_size` rows:
    335 MB at 4,096 lists of 512-d, 1.3 GB at MAX_NLIST), which the budget does not count.

    >>> estimated_bytes("flat", 1000, 512)
    2056000
    """
    nlist = ivf_params(count)[0]
    per_vector = {"flat": 4 * dim + 8, "ivf_flat": 4 * dim + 8, "hnsw": 4 * dim + 8 + 10 * hnsw_m,
                  "ivf_pq": m + 8}[kind]
    return count * per_vector + (4 * nlist * dim if kind.startswith("ivf") else 0)


def choose_index(count: int, dim: int, memory_budget_bytes: int | None = None) -> IndexChoice:
    """Pick the FAISS index for ``count`` unit vectors of ``dim`` under a memory budget (pure function).

    The rule, first match wins (budget ``None`` means 4 GiB):

    1. ``flat`` (exact) when ``count ≤ 50,000`` and the raw float32 vectors fit the budget;
    2. ``hnsw`` (M=32, efSearch 64) when ``count ≤ 200,000`` and vectors plus graph fit;
    3. ``ivf_flat`` (nlist ≈ 4√n, nprobe ≈ √nlist) while the raw vectors fit;
    4. ``ivf_pq`` otherwise: m is the largest divisor of ``dim`` with ``m ≤ dim/8`` (≤ 128) whose
       codes fit the budget; nbits is 8, fewer only when there are too few vectors to train 256 centroids.

    So a larger budget never picks a more compressed kind and a larger count never a less compressed one.

    Raises:
        IndexError_: when even 1-byte codes do not fit the budget.

    >>> choose_index(1_000, 512).describe()
    'Flat'
    >>> choose_index(100_000, 512).describe()
    'HNSW32'
    >>> choose_index(1_000_000, 512).describe()
    'IVF4000,Flat'
    >>> choose_index(1_000_000, 512, memory_budget_bytes=2**30).describe()
    'IVF4000,PQ64x8'
    >>> choose_index(10**8, 512).describe()  # lists capped at MAX_NLIST (was IVF40000: hours of CPU k-means)
    'IVF16384,PQ32x8'
    """
    if count < 0 or dim <= 0:
        raise IndexError_(f"cannot index {count} vectors of dimension {dim}")
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else memory_budget_bytes
    if count <= FLAT_MAX_COUNT and estimated_bytes("flat", count, dim) <= budget:
        return IndexChoice("flat")
    if count <= HNSW_MAX_COUNT and estimated_bytes("hnsw", count, dim) <= budget:
        return IndexChoice("hnsw")
    if estimated_bytes("ivf_flat", count, dim) <= budget:
        return choice_for_kind("ivf_flat", count, dim)
    for m in sorted((m for m in range(1, min(dim // 8, 128) + 1) if dim % m == 0), reverse=True) or [1]:
        if estimated_bytes("ivf_pq", count, dim, m=m) <= budget:
            return choice_for_kind("ivf_pq", count, dim, m=m)
    raise IndexError_(f"{count} vectors of dimension {dim} do not fit in {budget} bytes, even as PQ codes")


def choice_for_kind(kind: str, count: int, dim: int, m: int | None = None) -> IndexChoice:
    """Default parameters of ``kind`` for ``count`` vectors (the values :func:`choose_index` uses).

    PQ gets ``m`` sub-quantizers (default: largest divisor of ``dim`` ≤ min(dim/8, 128)) and 8 bits,
    fewer when ``count`` is too small to train 256 centroids from 39 points each.

    >>> choice_for_kind("ivf_pq", 10_000, 512).describe()
    'IVF256,PQ64x8'
    >>> choice_for_kind("ivf_pq", 5_000, 512).describe()
    'IVF128,PQ64x7'
    """
    if kind not in KINDS:
        raise IndexError_(f"unknown index kind {kind!r}; known: {', '.join(KINDS)}")
    if kind in ("flat", "hnsw"):
        return IndexChoice(kind)
    nlist, nprobe = ivf_params(count)
    if kind == "ivf_flat":
        return IndexChoice(kind, nlist=nlist, nprobe=nprobe)
    m = m or max(d for d in range(1, max(1, min(dim // 8, 128)) + 1) if dim % d == 0)
    nbits = max(1, min(8, int(math.log2(max(2, count // MIN_POINTS_PER_CENTROID)))))
    return IndexChoice(kind, nlist=nlist, m=m, nbits=nbits, nprobe=nprobe)
