"""In-process p50 of slide queries and of a patch-index search on one index, with the code of a checkout: an A/B
of the store's read path (run it once per checkout, alternating; FAISS and BLAS single-threaded, as served).

Usage: python -m benchmarks.rerank_read INDEX [--code CHECKOUT] [--queries 300]

With ``--code`` it runs itself in a child Python whose ``PYTHONPATH`` leads with that checkout (its ``indexer`` and
``retrieval`` are the ones timed; this file needs nothing else of ``benchmarks``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy and FAISS load their thread pools


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("index", type=Path)
    parser.add_argument("--code", type=Path, default=None, help="Checkout to time (default: this one).")
    parser.add_argument("--queries", type=int, default=300)
    args = parser.parse_args(argv)
    if args.code is not None:
        import subprocess

        from benchmarks.common import subprocess_env

        child = [sys.executable, __file__, str(args.index.resolve()), "--queries", str(args.queries)]
        out = subprocess.run(child, env=subprocess_env(args.code.resolve()), cwd=args.code, check=True,
                             capture_output=True, text=True).stdout
        print(out, end="")
        return json.loads(out)
    import numpy as np

    import indexer

    from indexer import vectors as vi
    from retrieval.search import SlideSearcher
    from retrieval.serve.live import warm

    searcher = warm(SlideSearcher(args.index))
    slides = sorted(searcher.arrays.ids)
    ids = [slides[int(r)] for r in np.random.default_rng(2).integers(len(slides), size=args.queries + 50)]
    patches = searcher.catalog.faiss("patches")
    q = np.random.default_rng(0).standard_normal((args.queries + 50, patches.d)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)

    def p50(run, items) -> float:
        for item in items[:50]:
            run(item)
        times = []
        for item in items[50:]:
            start = time.perf_counter()
            run(item)
            times.append(time.perf_counter() - start)
        return round(float(np.median(times)) * 1000, 3)

    result = {"code": str(Path(indexer.__file__).resolve().parents[1]), "slide_query_p50_ms": p50(lambda s: searcher.search_slide(s, k=10), ids),
              "patch_index_search_p50_ms": p50(lambda v: vi.search(patches, v[None], 10), q),
              "patch_index": type(patches).__name__}
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
