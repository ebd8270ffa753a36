"""Synthetic multi-stain cases: H&E and DAB-IHC renderings of the same planted case morphology.

Each case (one patient, one diagnosis) has a tissue layout drawn from its diagnosis's mixture; its H&E slides
and its IHC slides render that same layout and texture (same regions, same seed): the IHC rendering recolours
every tissue class as haematoxylin counterstain with DAB-positive tumour cells (``retrieval.demo.synthetic.IHC_CLASSES``),
so only the stain differs between a case's slides. Further H&E slides of a case (``he_per_case`` > 1) are
other sections: a new layout of the same case mixture. With ``ihc_section="serial"`` the IHC slides are such
other sections too (as in practice: each stain is cut from its own section). With ``concentration`` set, each
case draws its own tissue mixture from Dirichlet(concentration · diagnosis mixture), so cases of one diagnosis
differ and a case's slides share a composition that other cases of its diagnosis do not.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping

import numpy as np

from retrieval.demo.synthetic import DIAGNOSES, Diagnosis, SyntheticSlideSpec, cohort_layout, ihc, write_slide

FIELDS = ("slide_id", "patient_id", "case_id", "label", "organ", "true_stain")


def write_multistain_cohort(out_dir: str | Path, n_patients: int = 24, he_per_case: int = 1, ihc_per_case: int = 1,
                            diagnoses: Mapping[str, Diagnosis] = DIAGNOSES, size: tuple[int, int] = (2048, 2048),
                            seed: int = 0, mpp: float = 0.5, stain_column: bool = False,
                            concentration: float | None = None, ihc_section: str = "same",
                            show_progress: bool = True) -> Path:
    """Write the cohort's slides (pyramidal TIFF) and ``metadata.csv``; return the CSV path.

    Columns: slide_id, patient_id, case_id, label, organ, true_stain (the rendering, for checking detection),
    and ``stain`` only when ``stain_column`` (else the index detects it). Slide ids: ``P007-HE1``, ``P007-IHC1``.
    """
    from rich.progress import track

    if n_patients < 1 or he_per_case < 1 or ihc_per_case < 0:
        raise ValueError("need at least one patient and one H&E slide per case")
    if ihc_section not in ("same", "serial"):
        raise ValueError(f"ihc_section must be 'same' or 'serial', got {ihc_section!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(diagnoses)
    assigned = rng.permutation([names[i % len(names)] for i in range(n_patients)])
    rows, jobs = [], []
    for p, label in enumerate(assigned):
        diagnosis = diagnoses[str(label)]
        patient = f"P{p:03d}"
        mixture = dict(diagnosis.mixture)
        if concentration is not None:
            weights = rng.dirichlet(concentration * np.asarray(list(mixture.values()), np.float64))
            mixture = dict(zip(mixture, np.maximum(weights, 1e-3).tolist()))
        layouts = []
        for _ in range(he_per_case + (ihc_per_case if ihc_section == "serial" else 0)):
            slide_seed = int(rng.integers(2**31))
            layouts.append((slide_seed, cohort_layout(size[0], size[1], mixture, np.random.default_rng(slide_seed))))
        slides = [(f"HE{i + 1}", "H&E", s, regions) for i, (s, regions) in enumerate(layouts[:he_per_case])]
        for i in range(ihc_per_case):
            seed_i, regions = layouts[he_per_case + i] if ihc_section == "serial" else layouts[i % he_per_case]
            slides.append((f"IHC{i + 1}", "IHC", seed_i, ihc(regions)))
        for name, stain, slide_seed, regions in slides:
            slide_id = f"{patient}-{name}"
            jobs.append((out_dir / f"{slide_id}.tif", SyntheticSlideSpec(size[0], size[1], regions, mpp=mpp, seed=slide_seed)))
            row = {"slide_id": slide_id, "patient_id": patient, "case_id": patient, "label": diagnosis.name,
                   "organ": diagnosis.organ, "true_stain": stain}
            rows.append(row | ({"stain": stain} if stain_column else {}))
    for path, spec in track(jobs, description="writing multi-stain slides", transient=True, disable=not show_progress):
        write_slide(path, spec)
    csv_path = out_dir / "metadata.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
