"""FAISS on a GPU: which device FAISS uses, and moving indexes there and back, loudly.

``SLIDESEARCH_FAISS_DEVICE`` is ``auto`` (default: the GPU when FAISS sees one), ``cpu`` or ``cuda``. A GPU asked
for but not usable, a GPU the machine has but FAISS cannot use under ``auto``, and a move that fails (out of
memory, a CUDA error) are :class:`indexer.errors.DeviceError`; only an index type FAISS has no GPU version of
(an HNSW graph) stays on the CPU, and :func:`to_gpu` says so by returning None. The GPU calls go through a
backend (:class:`FaissGpu`; tests hand :func:`use_gpu_backend` a stand-in that runs the CPU index).
"""

from __future__ import annotations

import contextlib
from typing import Iterator

from indexer.errors import DeviceError
from indexer.settings import FAISS_DEVICE, read

DEVICE_ENV = FAISS_DEVICE  # auto | cpu | cuda ("cpu" keeps FAISS off a present GPU)
_CHOICES = {"auto": "auto", "cpu": "cpu", "cuda": "cuda", "gpu": "cuda"}
GPU_PQ_BYTES = (1, 2, 3, 4, 8, 12, 16, 20, 24, 28, 32, 40, 48, 56, 64, 96)  # GpuIndexIVFPQ code sizes (8-bit codes)
SHARED_MEMORY = 48 * 1024  # bytes of shared memory per block FAISS counts on for IVF-PQ lookup tables


class FaissGpu:
    """FAISS's own GPU calls on GPU ``device`` (one resource pool, created on first use and kept)."""

    def __init__(self, device: int = 0):
        self.device, self._resources = device, None

    def count(self) -> int:
        """GPUs FAISS sees (0 on a CPU-only build or machine)."""
        import faiss

        return int(faiss.get_num_gpus())

    def gpu_build(self) -> bool:
        """Whether this FAISS build has GPU support at all (faiss-gpu, not faiss-cpu)."""
        import faiss

        return hasattr(faiss, "StandardGpuResources")

    def to_gpu(self, index):
        import faiss

        if self._resources is None:  # kept alive for as long as GPU indexes may use it
            self._resources = faiss.StandardGpuResources()
        options = faiss.GpuClonerOptions()
        pq = _pq(index)  # wide PQ codes need float16 lookup tables to fit the shared memory (64 bytes: 64 KB)
        options.useFloat16 = pq is not None and 4 * pq.M * (1 << pq.nbits) > SHARED_MEMORY
        return faiss.index_cpu_to_gpu(self._resources, self.device, index, options)

    def to_cpu(self, index):
        import faiss

        return faiss.index_gpu_to_cpu(index)

    def is_gpu(self, index) -> bool:
        import faiss

        return self.count() > 0 and isinstance(base_index(index), faiss.GpuIndex)  # cheap test first

    def label(self) -> str:
        return f"gpu:{self.device}"


_BACKEND: list = [FaissGpu()]


@contextlib.contextmanager
def use_gpu_backend(backend) -> Iterator[None]:
    """Route FAISS's GPU calls through ``backend`` (same methods as :class:`FaissGpu`) inside the block."""
    _BACKEND.append(backend)
    try:
        yield
    finally:
        _BACKEND.remove(backend)


def gpu_backend():
    """The backend in use (:class:`FaissGpu` unless a test installed another)."""
    return _BACKEND[-1]


def faiss_device() -> str:
    """``"gpu"`` or ``"cpu"``: where FAISS builds and searches, from ``SLIDESEARCH_FAISS_DEVICE``.

    Raises:
        DeviceError: an unknown value; ``cuda`` when FAISS sees no GPU; ``auto`` on a machine whose NVIDIA GPU
            this faiss-gpu build cannot use.
    """
    from indexer.models.devices import system_gpus

    raw = (read(DEVICE_ENV) or "auto").strip().lower() or "auto"
    want = _CHOICES.get(raw)
    if want is None:
        raise DeviceError(f"{DEVICE_ENV}={raw!r}: use auto, cpu or cuda")
    if want == "cpu":
        return "cpu"
    backend = gpu_backend()
    if backend.count() > 0:
        return "gpu"
    build = "this FAISS build has no GPU support" if not backend.gpu_build() else "FAISS sees no GPU"
    if want == "cuda":
        raise DeviceError(f"{DEVICE_ENV}=cuda asked for a GPU but {build}; set it to cpu or auto")
    seen = system_gpus() if backend.gpu_build() else []
    if seen:
        raise DeviceError(f"this machine has {', '.join(seen)} but FAISS sees no GPU (a driver/CUDA mismatch?); "
                          f"fix it, or set {DEVICE_ENV}=cpu to run FAISS on the CPU knowingly")
    return "cpu"


def gpu_enabled() -> bool:
    """Whether FAISS work goes to the GPU (:func:`faiss_device` is ``"gpu"``)."""
    return faiss_device() == "gpu"


def faiss_label() -> str:
    """Where this process's FAISS builds run: ``cpu``, or the GPU with what stays on the CPU."""
    if not gpu_enabled():
        return "cpu"
    return (f"{gpu_backend().label()} (IVF training and adds where FAISS has a GPU version; Flat and HNSW indexes "
            "are built on the CPU)")


def base_index(index):
    """The index inside an ``IndexIDMap``/``IndexIDMap2`` wrapper (downcast), else the index itself (downcast)."""
    import faiss

    index = faiss.downcast_index(index)
    return faiss.downcast_index(index.index) if isinstance(index, faiss.IndexIDMap) else index


def gpu_implemented(index) -> bool:
    """Whether FAISS has a GPU version of ``index``: Flat, IVF-Flat, IVF-SQ, and IVF-PQ with 8-bit codes of a size
    ``GpuIndexIVFPQ`` supports (up to 96 bytes); not HNSW graphs, nor the 7-bit or 128-byte PQ codes of small or
    very wide collections."""
    import faiss

    base = base_index(index)
    if isinstance(base, faiss.IndexIVFPQ):
        pq = base.pq
        return pq.nbits == 8 and pq.M in GPU_PQ_BYTES and bool(base.by_residual) and base.polysemous_ht == 0
    return isinstance(base, (faiss.IndexFlat, faiss.IndexIVFFlat, faiss.IndexIVFScalarQuantizer))


def is_gpu(index) -> bool:
    """Whether ``index`` lives on the GPU."""
    return gpu_backend().is_gpu(index)


def to_gpu(index):
    """A copy of ``index`` on the GPU; None when FAISS is on the CPU or has no GPU version of this index type.

    An IVF index with a graph coarse quantizer (``IVF4096_HNSW32``, trained on a CPU) goes over with its
    centroids in a flat quantizer: the GPU assigns by brute force (the index itself is unchanged).

    Raises:
        DeviceError: the move failed (out of GPU memory, a CUDA error): never a silent CPU copy.
    """
    if not gpu_enabled() or not gpu_implemented(index):
        return None
    with _flat_coarse(index):
        try:
            return gpu_backend().to_gpu(index)
        except RuntimeError as exc:
            raise DeviceError(f"cannot move a FAISS {type(base_index(index)).__name__} of {index.ntotal:,} vectors "
                              f"to the GPU ({_first_line(exc)}); set {DEVICE_ENV}=cpu to run FAISS on the "
                              "CPU knowingly") from None


def to_cpu(index):
    """``index`` itself when it is on the CPU, else its CPU copy."""
    return gpu_backend().to_cpu(index) if is_gpu(index) else index


@contextlib.contextmanager
def _flat_coarse(index) -> Iterator[None]:
    """Inside the block, an IVF ``index`` whose coarse quantizer is not flat has a flat one with its centroids."""
    import faiss

    ivf = faiss.try_extract_index_ivf(index)
    real = None if ivf is None else faiss.downcast_index(ivf.quantizer)
    if real is None or isinstance(real, faiss.IndexFlat):
        yield
        return
    flat = faiss.IndexFlat(ivf.d, ivf.metric_type)
    flat.add(real.reconstruct_n(0, real.ntotal))
    ivf.quantizer = flat
    try:
        yield
    finally:
        ivf.quantizer = real


def _pq(index):
    """The product quantizer of an IVF-PQ index, else None."""
    import faiss

    base = base_index(index)
    return base.pq if isinstance(base, faiss.IndexIVFPQ) else None


def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:200] if lines else type(exc).__name__
