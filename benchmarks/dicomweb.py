"""Patch reads over DICOMweb from a local Orthanc against the same DICOM-WSI slide from disk (issue 24).

A synthetic 40x DICOM-WSI slide (JPEG frames, ``retrieval/demo/dicom.py``) is written to a temporary folder and
uploaded to an Orthanc started for the run (Debian's ``orthanc`` + ``orthanc-dicomweb``, on a loopback port). Each
pass opens the slide afresh (empty frame caches) and reads every tissue patch of the index's grid in grid order,
as ``slidesearch index`` reads them; the figure is patches/s, the median of the passes, disk and DICOMweb
alternating. Opening (metadata over HTTP) is timed apart.

Usage: python -m benchmarks.dicomweb [--size 8192] [--mag 20] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from indexer.slides import open_slide
from retrieval.demo.synthetic import DIAGNOSES, SyntheticSlideSpec, cohort_layout
from retrieval.demo.dicom import write_dicom_slide
from indexer.tiles.tiling import TilingConfig, read_patch, tile_slide
from benchmarks.common import header, provenance, write_outputs
from benchmarks.fixtures.orthanc import running_orthanc


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


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=8192, help="slide side in level-0 px (0.25 µm/px, 40x)")
    parser.add_argument("--mag", type=float, default=20.0, help="patch magnification (224-px patches)")
    parser.add_argument("--repeats", type=int, default=5, help="passes per source")
    parser.add_argument("--out", type=Path, default=None, help="folder for bench_dicomweb.json and .md")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures to this file")
    args = parser.parse_args(argv)

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
        "provenance": provenance("benchmarks/dicomweb.py", argv),
    }
    write_outputs(args.out, "dicomweb", result, markdown(result, args.repeats))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return result


def markdown(result: dict, repeats: int) -> str:
    """The figures as Markdown: one row per source, and the ratio."""
    s = result["slide"]
    lines = [header(result["provenance"]), "",
             f"Slide {s['size']}² px at 0.25 µm/px, {s['levels_mb']:.0f} MB of JPEG frames in a local Orthanc; "
             f"{s['patches']} patches of {s['read_px']} px read at level {s['read_level']} ({s['mag']:g}x); median of "
             f"{repeats} passes, disk and DICOMweb alternating, each from a fresh handle.", "",
             "| source | patches/s | open (s) | passes |", "|---|---|---|---|"]
    for name in ("disk", "dicomweb"):
        fig = result[name]
        lines.append(f"| {name} | {fig['patches_per_s']:.0f} | {fig['open_s']:.3f} | {fig['passes_patches_per_s']} |")
    lines += ["", f"DICOMweb / disk: **{result['dicomweb_over_disk']:.2f}×**", ""]
    return "\n".join(lines)

if __name__ == "__main__":
    main()
