"""Multi-stain case benchmark (issue #16): cohort → stand-in slide-encoder files → index → `bench retrieval --level case`.

1. A synthetic multi-stain cohort (``scripts/make_multistain_cohort.py``): per case one H&E slide and one DAB-IHC
   rendering of the same morphology; no ``stain`` column, so the index detects stains.
2. Slide embeddings in TRIDENT's slide-encoder layout (``<slide_id>.h5``, ``features`` (D,), ``coords``) from a
   **stand-in slide encoder**, ``mean-tiny-grey``: the mean of the ``tiny`` encoder's patch features computed on
   grey-level patches (TRIDENT's ``mean-<patch encoder>`` slide encoders are such means). It is not a pretrained
   slide encoder (none can be downloaded here); it exercises the import and gives a second, colour-blind space
   to compare with ProAlign.
3. ``slidesearch index --slide-features DIR --slide-encoder mean-tiny-grey`` (in-process), then the case-level
   benchmark over every space and fusion, written to ``--out`` (JSON, Markdown, PNG).

Usage: ``python -m benchmarks.multistain --work /tmp/cases-bench --out benchmarks/figures --patients 48``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

SPACE = "mean-tiny-grey"


class GreyPreprocess:
    """Picklable: the encoder's preprocessing of the grey-level image."""

    def __init__(self, inner):
        self.inner = inner

    def __call__(self, image):
        return self.inner(image.convert("L").convert("RGB"))


def write_standin_slide_features(cohort: Path, out: Path, tiling, max_patches: int | None = None) -> float:
    """Write ``<slide_id>.h5`` (TRIDENT slide-feature layout) for every slide of ``cohort``; returns seconds."""
    import dataclasses

    import h5py

    from indexer.ingestion.encode import encode_slide
    from indexer.models.encoders import load_encoder
    from indexer.ingestion.config import IndexConfig

    start = time.perf_counter()
    encoder = load_encoder("tiny", device="cpu")
    encoder.preprocess = GreyPreprocess(encoder.preprocess)
    config = dataclasses.replace(IndexConfig(model="tiny"), tiling=tiling, num_workers=0, max_patches=max_patches)
    out.mkdir(parents=True, exist_ok=True)
    for path in sorted(cohort.glob("*.tif")):
        staged = encode_slide(path, {"slide_id": path.stem}, config, encoder)
        feature = staged.features.astype(np.float32).mean(axis=0)
        with h5py.File(out / f"{path.stem}.h5", "w") as h5:
            h5.create_dataset("features", data=feature)
            h5["features"].attrs.update({"name": path.stem, "savetodir": str(out)})
            h5.create_dataset("coords", data=staged.coords.astype(np.int64))
            h5["coords"].attrs.update({"patch_size_level0": int(staged.patch_size), "slide_encoder": SPACE})
    return time.perf_counter() - start


def main() -> None:
    """Run the steps above and print the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, required=True, help="folder for the cohort, features and index")
    parser.add_argument("--out", type=Path, required=True, help="folder for bench_cases.json/.md/.png")
    parser.add_argument("--patients", type=int, default=48)
    parser.add_argument("--size", type=int, default=2048)
    parser.add_argument("--k", default="1,5,10")
    parser.add_argument("--concentration", type=float, default=None, help="per-case mixture jitter (see the cohort script)")
    parser.add_argument("--ihc-section", choices=("same", "serial"), default="same")
    args = parser.parse_args()
    from indexer.ingestion.run import IndexConfig, run_index
    from retrieval.demo.multistain import write_multistain_cohort
    from indexer.tiles.tiling import TilingConfig
    from benchmarks.common import machine_description
    from retrieval.evaluation.bench_cases import markdown_case_report, run_case_benchmark, write_case_report
    from retrieval.query.catalog import Catalog

    tiling = TilingConfig(magnification=10, patch_px=64)
    timings = {}
    t0 = time.perf_counter()
    csv_path = write_multistain_cohort(args.work / "cohort", n_patients=args.patients, size=(args.size, args.size),
                                       concentration=args.concentration, ihc_section=args.ihc_section)
    timings["cohort"] = time.perf_counter() - t0
    timings["slide features"] = write_standin_slide_features(args.work / "cohort", args.work / "slide_features", tiling)
    t0 = time.perf_counter()
    config = IndexConfig(model="tiny", tiling=tiling, num_workers=0, slide_features_dir=str(args.work / "slide_features"),
                         slide_encoder=SPACE)
    report = run_index([args.work / "cohort"], args.work / "index", config, metadata_csv=csv_path, show_progress=False)
    timings["index"] = time.perf_counter() - t0
    assert not report.failed, report.failed
    rows = Catalog(args.work / "index").db.sql("SELECT stain, true_stain FROM slides").fetchall()
    detection = {"slides": len(rows), "correct": sum(a == b for a, b in rows)}
    t0 = time.perf_counter()
    ks = tuple(int(k) for k in args.k.split(","))
    result = run_case_benchmark(args.work / "index", "label", ks)
    timings["benchmark"] = time.perf_counter() - t0
    result |= {"machine": machine_description(), "stain_detection": detection,
               "timings_s": {k: round(v, 1) for k, v in timings.items()}}
    command = (f"python -m benchmarks.multistain --work {args.work} --out {args.out} --patients {args.patients} "
               f"--size {args.size} --k {args.k} --ihc-section {args.ihc_section}"
               + (f" --concentration {args.concentration:g}" if args.concentration else ""))
    write_case_report(result, args.out, command=command)
    print(markdown_case_report(result))
    print(json.dumps({"stain_detection": detection, "timings_s": result["timings_s"], "machine": result["machine"]}))


if __name__ == "__main__":
    main()
