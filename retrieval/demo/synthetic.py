"""Deterministic synthetic whole-slide images (pyramidal TIFF/SVS, PNG) and labelled cohorts for tests."""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Iterator, Mapping

import numpy as np
from PIL import Image

BANK_PX = 1024  # side of the periodic texture patch every region is cut from
_BACKGROUND = (0.95, 0.95, 0.94)


@dataclass(frozen=True)
class TissueClass:
    """A textured tissue appearance: a base colour, a feature colour and a texture recipe."""

    name: str
    base: tuple[float, float, float]
    feature: tuple[float, float, float]
    recipe: str  # "nuclei", "fibres", "mottled", "cells", "wisps"
    scale: float  # characteristic feature size in level-0 px
    density: float  # fraction of the area covered by the feature colour


TISSUE_CLASSES: dict[str, TissueClass] = {
    c.name: c
    for c in (
        TissueClass("tumour", (0.80, 0.58, 0.75), (0.33, 0.18, 0.50), "nuclei", 4.0, 0.40),
        TissueClass("stroma", (0.96, 0.72, 0.80), (0.82, 0.40, 0.58), "fibres", 10.0, 0.45),
        TissueClass("lymphocytes", (0.72, 0.66, 0.86), (0.20, 0.14, 0.45), "nuclei", 1.6, 0.55),
        TissueClass("necrosis", (0.92, 0.52, 0.50), (0.72, 0.30, 0.40), "mottled", 8.0, 0.50),
        TissueClass("adipose", (0.94, 0.78, 0.85), (0.78, 0.42, 0.60), "cells", 14.0, 0.12),
        TissueClass("mucin", (0.74, 0.80, 0.93), (0.55, 0.62, 0.86), "wisps", 6.0, 0.40),
    )
}
"""Tissue appearances with distinct mean colours and textures (all saturated enough to count as tissue)."""

ARTEFACTS: dict[str, TissueClass] = {
    c.name: c
    for c in (
        TissueClass("pen-blue", (0.16, 0.30, 0.78), (0.10, 0.22, 0.70), "mottled", 6.0, 0.5),
        TissueClass("pen-green", (0.18, 0.60, 0.34), (0.12, 0.50, 0.28), "mottled", 6.0, 0.5),
        TissueClass("pen-black", (0.09, 0.09, 0.11), (0.05, 0.05, 0.06), "mottled", 6.0, 0.5),
    )
}
"""Pen marks a tissue detector must ignore; usable as a ``Region.tissue`` like the tissue classes."""

IHC_SUFFIX = "@ihc"
_IHC_COLOURS = {  # (base, feature): haematoxylin counterstain, brown DAB where the marker is (tumour cells)
    "tumour": ((0.80, 0.64, 0.50), (0.50, 0.32, 0.16)),
    "stroma": ((0.84, 0.82, 0.92), (0.60, 0.58, 0.80)),
    "lymphocytes": ((0.76, 0.74, 0.90), (0.30, 0.28, 0.56)),
    "necrosis": ((0.80, 0.72, 0.64), (0.62, 0.50, 0.42)),
    "adipose": ((0.84, 0.84, 0.96), (0.52, 0.52, 0.80)),
    "mucin": ((0.74, 0.76, 0.92), (0.56, 0.58, 0.84)),
}
IHC_CLASSES: dict[str, TissueClass] = {
    name + IHC_SUFFIX: TissueClass(name + IHC_SUFFIX, base, feature, TISSUE_CLASSES[name].recipe,
                                   TISSUE_CLASSES[name].scale, TISSUE_CLASSES[name].density)
    for name, (base, feature) in _IHC_COLOURS.items()
}
"""DAB-IHC renderings of the tissue classes (``"tumour@ihc"``): the same texture (same morphology, same seed),
recoloured as haematoxylin counterstain with DAB-positive tumour cells; no eosin anywhere."""


def ihc(regions: tuple[Region, ...]) -> tuple[Region, ...]:
    """The same layout rendered as DAB-IHC (artefacts stay as they are)."""
    return tuple(Region(r.x0, r.y0, r.x1, r.y1, r.tissue + IHC_SUFFIX if r.tissue in TISSUE_CLASSES else r.tissue)
                 for r in regions)


@dataclass(frozen=True)
class Region:
    """A rectangle [x0, x1) × [y0, y1) in level-0 px filled with one tissue class (or artefact)."""

    x0: int
    y0: int
    x1: int
    y1: int
    tissue: str


@dataclass(frozen=True)
class SyntheticSlideSpec:
    """What to draw: size, tissue rectangles (later ones on top), MPP, seed, file flavour and tile size."""

    width: int
    height: int
    regions: tuple[Region, ...]
    mpp: float = 0.25
    seed: int = 0
    fmt: str = "tiff"  # "tiff" (generic pyramidal TIFF) or "svs" (Aperio-style)
    tile: int = 256
    compression: str = "zlib"  # or "jpeg" (quality 80, YCbCr 4:2:0 like Aperio's; needs imagecodecs)


@dataclass(frozen=True)
class Diagnosis:
    """A diagnosis: the organ, the tissue mixture (proportions) and report sentences."""

    name: str
    organ: str
    mixture: Mapping[str, float] = field(hash=False)
    reports: tuple[str, ...] = ()


DIAGNOSES: dict[str, Diagnosis] = {
    d.name: d
    for d in (
        Diagnosis(
            "adenocarcinoma", "colon",
            {"tumour": 0.45, "stroma": 0.25, "necrosis": 0.15, "lymphocytes": 0.10, "mucin": 0.05},
            ("Invasive moderately differentiated adenocarcinoma with desmoplastic stroma and dirty necrosis.",
             "Poorly differentiated adenocarcinoma infiltrating fibrous stroma; tumour necrosis present."),
        ),
        Diagnosis(
            "mucinous_adenocarcinoma", "colon",
            {"mucin": 0.50, "tumour": 0.25, "stroma": 0.20, "lymphocytes": 0.05},
            ("Mucinous adenocarcinoma: pools of extracellular mucin with floating tumour cell clusters.",
             "Adenocarcinoma with more than 50% extracellular mucin, consistent with mucinous type."),
        ),
        Diagnosis(
            "lymphoma", "lymph node",
            {"lymphocytes": 0.75, "stroma": 0.10, "adipose": 0.15},
            ("Diffuse sheets of atypical lymphoid cells effacing nodal architecture, consistent with lymphoma.",
             "Lymph node replaced by a monotonous lymphoid infiltrate; perinodal fat involved."),
        ),
        Diagnosis(
            "lipoma", "soft tissue",
            {"adipose": 0.75, "stroma": 0.25},
            ("Mature adipose tissue with thin fibrous septa, no atypia: lipoma.",
             "Lobules of mature fat cells separated by delicate fibrous septa, consistent with lipoma."),
        ),
    )
}
"""Four diagnoses, each a distinct mixture of tissue classes (slides of one diagnosis share composition)."""


# ---- textures --------------------------------------------------------------------------------
def _smooth_noise(rng: np.random.Generator, sigma: float | tuple[float, float]) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    field_ = gaussian_filter(rng.standard_normal((BANK_PX, BANK_PX)).astype(np.float32), sigma, mode="wrap")
    return (field_ - field_.mean()) / (field_.std() + 1e-8)


def _feature_mask(cls: TissueClass, rng: np.random.Generator) -> np.ndarray:
    """Where the feature colour goes, in [0, 1] (periodic, so the bank tiles without seams)."""
    s = cls.scale
    if cls.recipe == "fibres":
        field_ = _smooth_noise(rng, (s / 6, s * 1.5)) + 0.4 * _smooth_noise(rng, s)
    elif cls.recipe == "cells":  # membranes: thin lines where a smooth field crosses zero
        field_ = -np.abs(_smooth_noise(rng, s))
    elif cls.recipe == "wisps":
        field_ = _smooth_noise(rng, (s, s * 3)) + 0.5 * _smooth_noise(rng, s / 3)
    else:  # "nuclei", "mottled": blobs of a given size
        field_ = _smooth_noise(rng, s)
    threshold = np.quantile(field_, 1.0 - cls.density)
    soft = 1.0 if cls.recipe == "mottled" else 0.15
    return np.clip((field_ - threshold) / soft + 0.5, 0.0, 1.0)


@lru_cache(maxsize=64)
def _bank(name: str, downsample: int) -> np.ndarray:
    """Periodic BANK_PX/downsample texture (uint8 RGB) of a class, block-averaged for pyramid levels."""
    if downsample > 1:
        full = _bank(name, 1).astype(np.float32)
        side = BANK_PX // downsample
        return full.reshape(side, downsample, side, downsample, 3).mean(axis=(1, 3)).round().astype(np.uint8)
    texture = name.removesuffix(IHC_SUFFIX)  # a stained rendering shares its class's texture
    rng = np.random.default_rng(sum(map(ord, texture)) * 7919 + len(texture))
    if name == "background":
        rgb = np.asarray(_BACKGROUND, np.float32) + 0.004 * rng.standard_normal((BANK_PX, BANK_PX, 1))
        return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
    cls = TISSUE_CLASSES.get(name) or ARTEFACTS.get(name) or IHC_CLASSES.get(name)
    if cls is None:
        known = ", ".join([*TISSUE_CLASSES, *ARTEFACTS, *IHC_CLASSES])
        raise ValueError(f"unknown tissue class {name!r}; known: {known}")
    mask = _feature_mask(cls, rng)[..., None]
    rgb = (1 - mask) * np.asarray(cls.base, np.float32) + mask * np.asarray(cls.feature, np.float32)
    return (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)


def _region_offsets(spec: SyntheticSlideSpec) -> np.ndarray:
    return np.random.default_rng(spec.seed).integers(0, BANK_PX, size=(len(spec.regions), 2))


@lru_cache(maxsize=64)
def _padded_bank(name: str, downsample: int) -> np.ndarray:
    """The bank with a wrapped margin of half its side, so most periodic crops are plain slices."""
    bank = _bank(name, downsample)
    margin = max(1, bank.shape[0] // 2)
    return np.pad(bank, ((0, margin), (0, margin), (0, 0)), mode="wrap")


def _periodic_crop(name: str, downsample: int, row: int, col: int, h: int, w: int) -> np.ndarray:
    """(h, w, 3) crop of the periodic texture starting at (row, col) (any integers)."""
    side = BANK_PX // downsample
    padded = _padded_bank(name, downsample)
    r, c = row % side, col % side
    if r + h <= padded.shape[0] and c + w <= padded.shape[1]:
        return padded[r : r + h, c : c + w]
    return padded[np.ix_(np.arange(r, r + h) % side, np.arange(c, c + w) % side)]


def render_tile(spec: SyntheticSlideSpec, downsample: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    """Pixels (h, w, 3 uint8) of the area at level-``downsample`` coordinates (x, y) (outside = background)."""
    out = np.array(_periodic_crop("background", downsample, y, x, h, w))
    for region, (ox, oy) in zip(spec.regions, _region_offsets(spec)):
        rx0, ry0 = round(region.x0 / downsample), round(region.y0 / downsample)
        rx1, ry1 = round(region.x1 / downsample), round(region.y1 / downsample)
        ix0, iy0, ix1, iy1 = max(rx0, x), max(ry0, y), min(rx1, x + w), min(ry1, y + h)
        if ix1 > ix0 and iy1 > iy0:
            out[iy0 - y : iy1 - y, ix0 - x : ix1 - x] = _periodic_crop(
                region.tissue, downsample, iy0 + oy // downsample, ix0 + ox // downsample, iy1 - iy0, ix1 - ix0
            )
    return out


# ---- writers ---------------------------------------------------------------------------------
def level_shapes(spec: SyntheticSlideSpec) -> list[tuple[int, int, int]]:
    """(downsample, width, height) per pyramid level, halving until the longer side ≤ 2 tiles."""
    levels = [(1, spec.width, spec.height)]
    while max(levels[-1][1:]) > 2 * spec.tile and levels[-1][0] * 2 <= BANK_PX:
        ds = levels[-1][0] * 2
        levels.append((ds, max(1, spec.width // ds), max(1, spec.height // ds)))
    return levels


def level_tiles(spec: SyntheticSlideSpec, ds: int, width: int, height: int) -> Iterator[np.ndarray]:
    """The level's ``spec.tile``-sized RGB tiles (downsample ``ds``, size ``width`` × ``height``), row by row."""
    t = spec.tile
    for ty in range(0, height, t):
        for tx in range(0, width, t):
            yield render_tile(spec, ds, tx, ty, t, t)


def _aperio_description(spec: SyntheticSlideSpec, ds: int, width: int, height: int) -> str:
    app_mag = round(10.0 / spec.mpp)
    head = f"Aperio Image Library v12.0.15\r\n{spec.width}x{spec.height} [0,0 {spec.width}x{spec.height}]"
    head += f" ({spec.tile}x{spec.tile})" + ("" if ds == 1 else f" -> {width}x{height}")
    codec = "JPEG/RGB Q=80" if spec.compression == "jpeg" else "Deflate"
    return f"{head} {codec}|AppMag = {app_mag}|MPP = {spec.mpp}|Filename = synthetic-{spec.seed}"


def write_slide(path: str | Path, spec: SyntheticSlideSpec) -> Path:
    """Write a pyramidal tiled TIFF (``fmt="tiff"``) or Aperio-style SVS (``fmt="svs"``), tile by tile.

    Reduced levels are separate pages with ``subfiletype=1`` (so OpenSlide sees them), zlib- or JPEG-compressed,
    with resolution tags (and, for SVS, ``MPP``/``AppMag`` in the Aperio description).
    """
    import tifffile

    if spec.fmt not in ("tiff", "svs"):
        raise ValueError(f"fmt must be 'tiff' or 'svs', got {spec.fmt!r}")
    if spec.compression not in ("zlib", "jpeg"):
        raise ValueError(f"compression must be 'zlib' or 'jpeg', got {spec.compression!r}")
    codec = {"compression": "zlib", "compressionargs": {"level": 1}} if spec.compression == "zlib" else \
        {"compression": "jpeg", "compressionargs": {"level": 80}}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    with tifffile.TiffWriter(tmp, bigtiff=spec.width * spec.height > 2**31) as tif:
        for ds, width, height in level_shapes(spec):
            px_per_cm = 1e4 / (spec.mpp * ds)
            tif.write(
                level_tiles(spec, ds, width, height),
                shape=(height, width, 3),
                dtype=np.uint8,
                tile=(spec.tile, spec.tile),
                photometric="rgb",
                **codec,
                resolution=(px_per_cm, px_per_cm),
                resolutionunit="CENTIMETER",
                subfiletype=0 if ds == 1 else 1,
                description=_aperio_description(spec, ds, width, height) if spec.fmt == "svs" else None,
                metadata=None,
                software=False,
                maxworkers=2,
                buffersize=32 << 20,
            )
    tmp.replace(path)
    return path


def write_png_slide(path: str | Path, spec: SyntheticSlideSpec) -> Path:
    """Write the slide as one plain PNG (single level, MPP stored as dpi) for the plain-image path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = render_tile(spec, 1, 0, 0, spec.width, spec.height)
    dpi = 25400.0 / spec.mpp
    Image.fromarray(pixels, "RGB").save(path, dpi=(dpi, dpi))
    return path


# ---- cohorts ---------------------------------------------------------------------------------
def _counts(mixture: Mapping[str, float], n: int) -> dict[str, int]:
    """Largest-remainder split of ``n`` blocks by ``mixture`` proportions (each class at least 1)."""
    total = sum(mixture.values())
    raw = {k: v / total * n for k, v in mixture.items()}
    counts = {k: max(1, int(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - int(raw[k]), reverse=True):
        if sum(counts.values()) >= n:
            break
        counts[k] += 1
    return counts


def cohort_layout(width: int, height: int, mixture: Mapping[str, float], rng: np.random.Generator,
                  grid: int = 5, gaps: int = 3) -> tuple[Region, ...]:
    """Tissue blocks on a ``grid``×``grid`` layout inside an 8 % margin, class counts ∝ ``mixture``."""
    mx, my = int(width * 0.08), int(height * 0.08)
    bw, bh = (width - 2 * mx) // grid, (height - 2 * my) // grid
    cells = rng.permutation(grid * grid)[: grid * grid - gaps]
    labels = [name for name, k in _counts(mixture, len(cells)).items() for _ in range(k)][: len(cells)]
    regions = []
    for cell, tissue in zip(cells, rng.permutation(labels)):
        gx, gy = int(cell) % grid, int(cell) // grid
        regions.append(Region(mx + gx * bw, my + gy * bh, mx + (gx + 1) * bw, my + (gy + 1) * bh, str(tissue)))
    return tuple(regions)


def write_cohort(out_dir: str | Path, n_patients: int = 24, slides_per_patient: int = 2,
                 diagnoses: Mapping[str, Diagnosis] = DIAGNOSES, size: tuple[int, int] = (4096, 4096),
                 seed: int = 0, fmt: str = "tiff", mpp: float = 0.25) -> Path:
    """Write a labelled cohort of synthetic slides and ``metadata.csv``; return the CSV path.

    Columns: slide_id, patient_id, case_id, label, stain, organ, report. Diagnoses are balanced
    over patients, a patient's slides share the diagnosis, and everything is deterministic by ``seed``.
    """
    from rich.progress import track

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = list(diagnoses)
    assigned = rng.permutation([names[i % len(names)] for i in range(n_patients)])
    suffix = ".svs" if fmt == "svs" else ".tif"
    rows, jobs = [], []
    for p, label in enumerate(assigned):
        diagnosis = diagnoses[str(label)]
        patient = f"P{p:03d}"
        for s in range(slides_per_patient):
            slide_seed = int(rng.integers(2**31))
            regions = cohort_layout(size[0], size[1], diagnosis.mixture, np.random.default_rng(slide_seed))
            slide_id = f"{patient}-S{s + 1}"
            spec = SyntheticSlideSpec(size[0], size[1], regions, mpp=mpp, seed=slide_seed, fmt=fmt)
            jobs.append((out_dir / f"{slide_id}{suffix}", spec))
            report = diagnosis.reports[slide_seed % len(diagnosis.reports)] if diagnosis.reports else diagnosis.name
            rows.append({"slide_id": slide_id, "patient_id": patient, "case_id": f"{patient}-C1",
                         "label": diagnosis.name, "stain": "H&E", "organ": diagnosis.organ, "report": report})
    for path, spec in track(jobs, description="writing synthetic slides", transient=True):
        write_slide(path, spec)
    csv_path = out_dir / "metadata.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["slide_id"])
        writer.writeheader()
        writer.writerows(rows)
    return csv_path
