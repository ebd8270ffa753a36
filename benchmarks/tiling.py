"""Patch-read throughput: 20x patches from a generated 40x pyramid (≥ 20,000² px), plus write/detect times."""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.slides import open_slide
from indexer.synthetic import DIAGNOSES, SyntheticSlideSpec, cohort_layout, write_slide
from indexer.tiling import TileGrid, TilingConfig, read_patch, tile_slide
from indexer.tissue import detect_tissue


def _read_all(slide, grid: TileGrid, limit: int) -> float:
    """Seconds to read the first ``limit`` patches of ``grid``."""
    start = time.perf_counter()
    for index in range(min(limit, len(grid))):
        read_patch(slide, grid, index)
    return time.perf_counter() - start


def main() -> None:
    """Write a large synthetic slide, tile it at 20x and time patch reads (level 1 vs level 0 + resize)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=20_000, help="slide side in level-0 px (mpp 0.25, 40x)")
    parser.add_argument("--repeats", type=int, default=3, help="timed passes over the grid")
    parser.add_argument("--limit", type=int, default=1_000_000, help="read at most this many patches a pass")
    args = parser.parse_args()

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

    print(f"slide {args.size}x{args.size} px, {len(slide.level_dimensions)} levels, {size_mb:.0f} MB (zlib level 1)")
    print(f"write (streamed tiles): {write_s:.1f} s = {args.size**2 / write_s / 1e6:.1f} Mpx/s")
    print(f"tissue detection: median {statistics.median(detect_times):.2f} s; tiling: {grid_s * 1e3:.1f} ms; "
          f"tissue {mask.tissue_fraction:.2f}; patches {len(grid)} (size {grid.size}, level {grid.level}, "
          f"read {grid.read_px} px)")
    print(f"read_patch 20x from level 1 (no resize): median {statistics.median(pyramid):.0f} patches/s "
          f"(runs {', '.join(f'{v:.0f}' for v in pyramid)}) over {n} patches")
    print(f"read_patch 20x from level 0 + resize:   median {statistics.median(resized):.0f} patches/s "
          f"(runs {', '.join(f'{v:.0f}' for v in resized)}); pyramid speed-up "
          f"{statistics.median(pyramid) / statistics.median(resized):.2f}x")


if __name__ == "__main__":
    main()
