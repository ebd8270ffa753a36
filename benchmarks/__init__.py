"""Speed and memory benchmarks (not part of the installed package). Run from the repository root as
``python -m benchmarks.NAME``; ``bash benchmarks/reproduce.sh`` runs them all. Shared helpers: benchmarks.common."""
