"""Patch-read throughput: 20x patches from a generated 40x pyramid (≥ 20,000² px), plus write/detect times.

Usage: python -m benchmarks.tiling [--size 20000] [--repeats 3] [--limit N] [--out DIR]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import header, provenance, write_outputs
from indexer.slides import open_slide
from retrieval.demo.synthetic import DIAGNOSES, SyntheticSlideSpec, cohort_layout, write_slide
from indexer.tiles.tiling import TileGrid, TilingConfig, read_patch, tile_slide
from indexer.tiles.tissue import detect_tissue


def _read_all(slide, grid: TileGrid, limit: int) -> float:
    """Seconds to read the first ``limit`` patches of ``grid``."""
    start = time.perf_counter()
    for index in range(min(limit, len(grid))):
        read_patch(slide, grid, index)
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> str:
    """Write a large synthetic slide, tile it at 20x and time patch reads (level 1 vs level 0 + resize)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=20_000, help="slide side in level-0 px (mpp 0.25, 40x)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the grid")
    parser.add_argument("--limit", type=int, default=1_000_000, help="read at most this many patches a pass")
    parser.add_argument("--out", type=Path, default=None, help="write bench_tiling.md and .json here")
    args = parser.parse_args(argv)
    facts = provenance("benchmarks/tiling.py", argv)

    with tempfile.TemporaryDirectory(prefix="slidesearch-bench-") as tmp:
        regions = cohort_layout(args.size, args.size, DIAGNOSES["adenocarcinoma"].mixture, np.random.default_rng(0))
        spec = SyntheticSlideSpec(args.size, args.size, regions, mpp=0.25, seed=0)
        start = time.perf_counter()
        path = write_slide(Path(tmp) / "big.tif", spec)
        write_s = time.perf_counter() - start
        size_mb = path.stat().st_size / 1e6

        slide = open_slide(path)
        detect_times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            mask = detect_tissue(slide)
            detect_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        grid = tile_slide(slide, TilingConfig(magnification=20, patch_px=224), mask=mask)
        grid_s = time.perf_counter() - start
        # Same grid read from level 0 (448 px) and resized: what a slide without a 2x level costs.
        level0 = TileGrid(grid.coords, grid.size, 0, grid.size, grid.patch_px)

        n = min(args.limit, len(grid))
        pyramid = [n / _read_all(slide, grid, n) for _ in range(args.repeats)]
        resized = [n / _read_all(slide, level0, n) for _ in range(args.repeats)]

    med_pyr, med_res = statistics.median(pyramid), statistics.median(resized)
    result = {"provenance": facts, "size": args.size, "levels": len(slide.level_dimensions), "mb": size_mb,
              "write_s": write_s, "detect_s": statistics.median(detect_times), "grid_ms": grid_s * 1e3,
              "tissue": mask.tissue_fraction, "patches": len(grid), "read": n, "pyramid": pyramid, "resized": resized}
    text = "\n".join([
        header(facts), "",
        "| step | figure |", "|---|---|",
        f"| write the slide ({args.size:,}² px at 0.25 µm/px, {result['levels']} levels, zlib 1) | {write_s:.1f} s = "
        f"{args.size**2 / write_s / 1e6:.1f} Mpx/s, {size_mb:.0f} MB |",
        f"| tissue detection (median of {args.repeats}) | {result['detect_s']:.2f} s (tissue {mask.tissue_fraction:.0%}) |",
        f"| tiling at 20x / 224 px | {grid_s * 1e3:.0f} ms → {len(grid):,} patches (read {grid.read_px} px at level "
        f"{grid.level}) |",
        f"| `read_patch` 20x from level {grid.level} (no resize) | **median {med_pyr:.0f} patches/s** (runs "
        f"{', '.join(f'{v:.0f}' for v in pyramid)}; {n:,} patches a run) |",
        f"| same grid from level 0 + resize | median {med_res:.0f} patches/s → the pyramid level is "
        f"{med_pyr / med_res:.2f}× faster |"]) + "\n"
    write_outputs(args.out, "tiling", result, text)
    return text


if __name__ == "__main__":
    main()
