"""A FAISS GPU backend that runs on the CPU, for tests of the GPU code paths (`indexer.vectors.device`).

Its "GPU" indexes are real FAISS indexes (CPU clones), so everything searched, trained or added through them gives
real results that tests compare with the CPU path. It keeps FAISS's GPU cloner rules, so code that would fail on
a GPU fails here too: an HNSW graph has no GPU version, IVF-PQ needs 8-bit codes of a supported size, and an IVF
index moves only with a flat coarse quantizer (``allowCpuCoarseQuantizer`` is off by default). ``fail`` makes every move raise, like an out-of-memory GPU.
"""

from __future__ import annotations

import faiss

from indexer.vectors.device import GPU_PQ_BYTES
from indexer.vectors.device import base_index as _base


class StandInGpu:
    """Records every move; ``count`` GPUs seen; ``fail``: the message each move raises (None: moves succeed)."""

    def __init__(self, count: int = 1, fail: str | None = None, gpu_build: bool = True):
        self._count, self.fail, self._gpu_build = count, fail, gpu_build
        self.moved: list = []  # the "GPU" indexes handed out (identity marks them)
        self.to_gpu_log: list[str] = []  # base type names moved over
        self.to_cpu_log: list[str] = []

    def count(self) -> int:
        return self._count

    def gpu_build(self) -> bool:
        return self._gpu_build

    def label(self) -> str:
        return "gpu:0 (stand-in)"

    def to_gpu(self, index):
        base = _base(index)
        if self.fail:
            raise RuntimeError(f"Error in GpuIndex: {self.fail}")
        if isinstance(base, faiss.IndexHNSW):
            raise RuntimeError("This index type is not implemented on GPU.")
        if isinstance(base, faiss.IndexIVFPQ) and (base.pq.nbits != 8 or base.pq.M not in GPU_PQ_BYTES):
            raise RuntimeError("GPU: only pq.nbits == 8 is supported")
        ivf = faiss.try_extract_index_ivf(index)
        if ivf is not None and not isinstance(faiss.downcast_index(ivf.quantizer), faiss.IndexFlat):
            raise RuntimeError("This index type is not implemented on GPU and allowCpuCoarseQuantizer is set to false.")
        copy = faiss.clone_index(index)
        self.moved.append(copy)
        self.to_gpu_log.append(type(base).__name__)
        return copy

    def to_cpu(self, index):
        assert self.is_gpu(index), "to_cpu of an index that is not on the GPU"
        self.to_cpu_log.append(type(_base(index)).__name__)
        return faiss.clone_index(index)

    def is_gpu(self, index) -> bool:
        return any(index is moved for moved in self.moved)

