"""Vector indexes, one concern per module; this package's names are the room's interface (``vi.search`` etc.).

- ``choice``: which FAISS index fits a collection under a memory budget (pure functions);
- ``build``: train and add (GPU when enabled), remove by id;
- ``knn``: top-k, filtered to allowed ids, over one index or segments (``SegmentedIndex``); reconstruction;
- ``recall``: recall@k against exact search;
- ``io``: atomic save, checked load;
- ``exact``: brute-force search over (memory-mapped) rows; ``device``: FAISS on a GPU.
"""

from indexer.vectors.build import ADD_CHUNK, add_to_trained, build_index, remove_ids, train_index
from indexer.vectors.choice import (DEFAULT_MEMORY_BUDGET_BYTES, FLAT_MAX_COUNT, HNSW_MAX_COUNT, KINDS, MAX_NLIST,
                                    MIN_POINTS_PER_CENTROID, IndexChoice, choice_for_kind, choose_index,
                                    estimated_bytes, ivf_params, train_sample_size)
from indexer.vectors.device import DEVICE_ENV, faiss_device, gpu_enabled, to_gpu
from indexer.vectors.exact import exact_search
from indexer.vectors.io import index_nbytes, load_index, save_index
from indexer.vectors.recall import measure_recall, measure_recalls
from indexer.vectors.knn import (EXACT_FILTER_FLOATS, CompositeIndex, SegmentedIndex, combine, filter_params,
                                    id_selector, pad_results, reconstruct, search)

__all__ = [
    "ADD_CHUNK", "DEFAULT_MEMORY_BUDGET_BYTES", "DEVICE_ENV", "EXACT_FILTER_FLOATS", "FLAT_MAX_COUNT", "HNSW_MAX_COUNT",
    "KINDS", "MAX_NLIST", "MIN_POINTS_PER_CENTROID", "CompositeIndex", "IndexChoice", "SegmentedIndex", "add_to_trained",
    "build_index", "choice_for_kind", "choose_index", "combine", "estimated_bytes", "exact_search", "faiss_device",
    "filter_params", "gpu_enabled", "id_selector", "index_nbytes", "ivf_params", "load_index", "measure_recall",
    "measure_recalls", "pad_results", "reconstruct", "remove_ids", "save_index", "search", "to_gpu",
    "train_index", "train_sample_size",
]
