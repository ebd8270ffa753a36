"""Speed and memory benchmarks (not part of the installed package). Run from the repository root as
``python -m benchmarks.NAME``; ``bash benchmarks/reproduce.sh`` runs them all. Shared helpers: benchmarks.common.

Importing the package applies slidesearch's thread defaults (``indexer.settings``) before a benchmark loads numpy,
FAISS or torch."""

import indexer  # noqa: F401 (applies indexer.settings.DEFAULTS)
