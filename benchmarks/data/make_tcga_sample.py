"""Build ``tcga_reports_sample.csv.gz`` (the real-report benchmark's data) from the source files named below.

Run: python benchmarks/data/make_tcga_sample.py REPORTS_DIR LABELS_CSV [--per-type 70] [--seed 0]

REPORTS_DIR holds the per-organ CSVs of github.com/grasool/tcga-path-report (``Reports/<ORGAN>.csv``: OCR text
of the TCGA pathology report PDFs, column ``ocr_text``; ``pdf_file_name_path`` names the TCGA patient);
LABELS_CSV is ``data/tcga_metadata/tcga_patient_to_cancer_type.csv`` of github.com/tatonetti-lab/tcga-path-reports
(patient → TCGA study). Kept: one report per patient, with its label, after dropping the OCR'd header lines
(UUID, patient barcode, "Redacted", barcode stripes: they name the patient and the submitting site, which
would leak the label) and reports that OCR turned into noise (under 400 characters, or under 75 % of
their words plain words); types with at least 25 such reports, at most ``--per-type`` of each (seeded).
"""

from __future__ import annotations

import argparse
import csv
import gzip
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("tcga_reports_sample.csv.gz")
_PATIENT = re.compile(r"TCGA-[A-Z0-9]{2}-[A-Z0-9]{4}")
_HEADER = re.compile(r"UUID|TCGA|Redacted|[Il1|^]{12}", re.IGNORECASE)
_WORD = re.compile(r"^[A-Za-z][a-z]*[.,;:)]?$|^\(?\d+(\.\d+)?[.,;:)%]?$")


def clean(text: str) -> str:
    """The report without its OCR'd header lines, stripped."""
    return "\n".join(line for line in text.splitlines() if not _HEADER.search(line)).strip()


def plain_share(text: str) -> float:
    """Share of whitespace-separated words that look like ordinary words or numbers."""
    words = text.split()
    return sum(bool(_WORD.match(w)) for w in words) / max(1, len(words))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("reports", type=Path)
    parser.add_argument("labels", type=Path)
    parser.add_argument("--per-type", type=int, default=70)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    csv.field_size_limit(1 << 30)
    with open(args.labels, newline="") as fh:
        labels = {r["patient_id"]: r["cancer_type"] for r in csv.DictReader(fh)}
    by_type: dict[str, dict[str, str]] = defaultdict(dict)
    for path in sorted(args.reports.glob("*.csv")):
        with open(path, newline="", encoding="utf-8", errors="replace") as fh:
            for row in csv.DictReader(fh):
                found = _PATIENT.search(row.get("pdf_file_name_path") or "")
                text = clean(row.get("ocr_text") or "")
                if found and found.group(0) in labels and len(text) >= 400 and plain_share(text) >= 0.75:
                    by_type[labels[found.group(0)]].setdefault(found.group(0), text)
    rng = np.random.default_rng(args.seed)
    rows = []
    for kind in sorted(by_type):
        patients = sorted(by_type[kind])
        if len(patients) < 25:
            continue
        for patient in sorted(rng.choice(patients, min(args.per_type, len(patients)), replace=False)):
            rows.append((str(patient), kind, by_type[kind][str(patient)]))
    with gzip.open(OUT, "wt", newline="", encoding="utf-8", compresslevel=9) as fh:
        writer = csv.writer(fh)
        writer.writerow(["slide_id", "cancer_type", "report"])
        writer.writerows(rows)
    print(f"{len(rows)} reports, {len({r[1] for r in rows})} types -> {OUT} ({OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
