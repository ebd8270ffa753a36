"""Write a synthetic multi-stain cohort: per case, H&E and DAB-IHC renderings of one planted morphology."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from retrieval.demo.multistain import write_multistain_cohort


def main() -> None:
    """Parse arguments and write the cohort."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path, help="folder for the slides and metadata.csv")
    parser.add_argument("--patients", type=int, default=24, help="number of patients = cases (diagnoses balanced)")
    parser.add_argument("--he-per-case", type=int, default=1, help="H&E slides per case (sections of one diagnosis)")
    parser.add_argument("--ihc-per-case", type=int, default=1, help="DAB-IHC slides per case (same morphology as an H&E)")
    parser.add_argument("--size", type=int, default=2048, help="slide side in level-0 px")
    parser.add_argument("--mpp", type=float, default=0.5, help="microns per pixel at level 0")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same cohort)")
    parser.add_argument("--stain-column", action="store_true", help="write the stain column (default: leave it to detection)")
    parser.add_argument("--concentration", type=float, default=None,
                        help="per-case tissue mixture ~ Dirichlet(concentration x diagnosis mixture); default: the diagnosis's own")
    parser.add_argument("--ihc-section", choices=("same", "serial"), default="same",
                        help="IHC rendering of an H&E slide's section (same) or of another section of the case (serial)")
    args = parser.parse_args()
    start = time.perf_counter()
    csv_path = write_multistain_cohort(args.out_dir, n_patients=args.patients, he_per_case=args.he_per_case,
                                       ihc_per_case=args.ihc_per_case, size=(args.size, args.size), seed=args.seed,
                                       mpp=args.mpp, stain_column=args.stain_column,
                                       concentration=args.concentration, ihc_section=args.ihc_section)
    n = args.patients * (args.he_per_case + args.ihc_per_case)
    print(f"wrote {n} slides and {csv_path} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
