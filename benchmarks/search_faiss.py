"""FAISS search-speed benchmark: `python benchmarks/search_faiss.py --out DIR [options]` = `slidesearch bench search`."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `slidesearch` sets it: idle threads must not spin

from retrieval.cli import app  # noqa: E402  (registers every command, `bench search` included)

if __name__ == "__main__":
    # Same options and the same library call (retrieval.bench_search.run_search_benchmark) as the CLI.
    app(["bench", "search", *sys.argv[1:]], prog_name="search_faiss.py")
