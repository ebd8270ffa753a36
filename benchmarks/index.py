"""Indexing benchmark (same as `slidesearch bench index`): patches/s with tiny and ViT-B-16, time by stage,
peak memory for 5 vs 20 slides; each index run in a fresh process.

Usage: python benchmarks/index.py [--out out/bench-index] [--slides 5 20] [--vit-slides 2] [--vit-max-patches 24]
       [--slide-px 2048] [--mpp 0.5] [--workers 2] [--models tiny openclip:ViT-B-16]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval.bench_index import VIT, IndexBenchConfig, markdown_report, run_index_benchmark, write_index_report  # noqa: E402


def main() -> None:
    """Parse arguments, run the benchmark, print the Markdown report and write JSON + Markdown + PNG."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/bench-index"), help="folder for the reports")
    parser.add_argument("--slides", type=int, nargs="+", default=[5, 20], help="slide counts indexed with tiny")
    parser.add_argument("--vit-slides", type=int, default=2, help="slides indexed with ViT-B-16 (random weights)")
    parser.add_argument("--vit-max-patches", type=int, default=24, help="patches sampled per slide for ViT-B-16")
    parser.add_argument("--slide-px", type=int, default=2048, help="side of the generated slides in level-0 px")
    parser.add_argument("--mpp", type=float, default=0.5, help="microns per pixel of the generated slides")
    parser.add_argument("--workers", type=int, default=2, help="patch-reading worker processes")
    parser.add_argument("--models", nargs="+", default=["tiny", VIT], help="encoders to time")
    args = parser.parse_args()
    config = IndexBenchConfig(slide_px=args.slide_px, mpp=args.mpp, memory_slides=tuple(args.slides),
                              vit_slides=args.vit_slides, vit_max_patches=args.vit_max_patches, workers=args.workers,
                              models=tuple(args.models))
    command = "python benchmarks/index.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="slidesearch-bench-index-") as tmp:
        result = run_index_benchmark(config, tmp, on_step=lambda s: print(f"… {s}", file=sys.stderr, flush=True))
    paths = write_index_report(result, args.out, command=command.strip())
    print(markdown_report(result, command.strip()))
    print("wrote " + ", ".join(str(p) for p in paths.values()))


if __name__ == "__main__":
    main()
