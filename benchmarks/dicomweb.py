"""Patch reads over DICOMweb from a local Orthanc against the same DICOM-WSI slide from disk (issue 24).

A synthetic 40x DICOM-WSI slide (JPEG frames, ``retrieval/demo/dicom.py``) is written to a temporary folder and
uploaded to an Orthanc started for the run (Debian's ``orthanc`` + ``orthanc-dicomweb``, on a loopback port). Each
pass opens the slide afresh (empty frame caches) and reads every tissue patch of the index's grid in grid order,
as ``slidesearch index`` reads them; the figure is patches/s, the median of the passes, disk and DICOMweb
alternating. Opening (metadata over HTTP) is timed apart.

Usage: python benchmarks/dicomweb.py [--size 8192] [--mag 20] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))  # the Orthanc runner the tests use

import numpy as np  # noqa: E402

from indexer.slides import open_slide  # noqa: E402
from retrieval.demo.synthetic import DIAGNOSES, SyntheticSlideSpec, cohort_layout  # noqa: E402
from retrieval.demo.dicom import write_dicom_slide  # noqa: E402
from indexer.tiles.tiling import TilingConfig, read_patch, tile_slide  # noqa: E402
from orthanc import running_orthanc  # noqa: E402


def one_pass(source, grid) -> tuple[float, float]:
    """(seconds to open ``source``, patches/s reading every patch of ``grid`` from the fresh handle)."""
    start = time.perf_counter()
    slide = open_slide(source)
    opened = time.perf_counter() - start
    start = time.perf_counter()
    for index in range(len(grid)):
        read_patch(slide, grid, index)
    rate = len(grid) / (time.perf_counter() - start)
    slide.close()
    return opened, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="slide side in level-0 px (0.25 µm/px, 40x)")
    parser.add_argument("--mag", type=float, default=20.0, help="patch magnification (224-px patches)")
    parser.add_argument("--repeats", type=int, default=5, help="passes per source")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="slidesearch-dicomweb-") as tmp:
        regions = cohort_layout(args.size, args.size, DIAGNOSES["adenocarcinoma"].mixture, np.random.default_rng(0))
        folder = write_dicom_slide(Path(tmp) / "slide", SyntheticSlideSpec(args.size, args.size, regions, mpp=0.25, seed=0))
        size_mb = sum(f.stat().st_size for f in folder.iterdir()) / 1e6
        with running_orthanc(Path(tmp) / "orthanc") as orthanc:
            orthanc.upload(folder)
            import pydicom

            first = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
            url = f"{orthanc.source}/studies/{first.StudyInstanceUID}/series/{first.SeriesInstanceUID}"
            with open_slide(folder) as slide:
                grid = tile_slide(slide, TilingConfig(magnification=args.mag, patch_px=224))
            one_pass(url, grid)  # warms Orthanc's own storage cache, as a server in use has it
            runs: dict[str, list[tuple[float, float]]] = {"disk": [], "dicomweb": []}
            for _ in range(args.repeats):
                runs["disk"].append(one_pass(folder, grid))
                runs["dicomweb"].append(one_pass(url, grid))
    figures = {name: {"patches_per_s": statistics.median(r for _, r in passes),
                      "open_s": statistics.median(o for o, _ in passes),
                      "passes_patches_per_s": [round(r, 1) for _, r in passes]} for name, passes in runs.items()}
    result = {
        "slide": {"size": args.size, "levels_mb": round(size_mb, 1), "patches": len(grid), "read_level": grid.level,
                  "read_px": grid.read_px, "mag": args.mag},
        **figures, "dicomweb_over_disk": figures["dicomweb"]["patches_per_s"] / figures["disk"]["patches_per_s"],
        "commit": subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                                 text=True).stdout.strip(),
        "machine": f"{platform.processor() or platform.machine()}, {platform.python_version()}",
    }
    print(f"slide {args.size}² px at 0.25 µm/px, {size_mb:.0f} MB of JPEG frames; {len(grid)} patches of "
          f"{grid.read_px} px read at level {grid.level} ({args.mag:g}x); median of {args.repeats} passes")
    print("| source | patches/s | open (s) | passes |")
    print("|---|---|---|---|")
    for name, fig in figures.items():
        print(f"| {name} | {fig['patches_per_s']:.0f} | {fig['open_s']:.3f} | {fig['passes_patches_per_s']} |")
    print(f"DICOMweb / disk: {result['dicomweb_over_disk']:.2f}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
