"""Write a labelled synthetic cohort (pyramidal TIFF/SVS slides + metadata.csv) for demos and benchmarks."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from retrieval.demo.synthetic import DIAGNOSES, write_cohort


def main() -> None:
    """Parse arguments and write the cohort."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the slides and metadata.csv")
    parser.add_argument("--patients", type=int, default=24, help="number of patients (diagnoses balanced)")
    parser.add_argument("--slides-per-patient", type=int, default=2, help="slides per patient")
    parser.add_argument("--size", type=int, default=4096, help="slide side in level-0 px")
    parser.add_argument("--mpp", type=float, default=0.25, help="microns per pixel at level 0")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    parser.add_argument("--fmt", choices=("tiff", "svs"), default="tiff", help="file flavour")
    args = parser.parse_args()
    start = time.perf_counter()
    csv_path = write_cohort(args.out_dir, n_patients=args.patients, slides_per_patient=args.slides_per_patient,
                            diagnoses=DIAGNOSES, size=(args.size, args.size), seed=args.seed, fmt=args.fmt,
                            mpp=args.mpp)
    n = args.patients * args.slides_per_patient
    print(f"wrote {n} slides and {csv_path} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
