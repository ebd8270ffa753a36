"""Encode one slide: open, detect tissue, tile and embed its patches (or import its features)."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import UserError
from indexer.progress import StageProgress
from indexer.store.staging import StagedSlide

if TYPE_CHECKING:
    from indexer.pipeline import IndexConfig


def file_facts(path: Path) -> dict[str, Any]:
    """Size and modification time of a slide file, or of every file in a slide folder (DICOM-WSI)."""
    if path.is_dir():
        stats = [p.stat() for p in path.rglob("*") if p.is_file()]
        return {"size_bytes": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
    stat = path.stat()
    return {"size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def encode_slide(path, record, config: "IndexConfig", encoder, mpp: float | None = None, timings=None,
                 progress=None) -> StagedSlide:
    """Open, detect tissue, tile and embed one slide (or import its features).

    Args:
        path: the slide file.
        record: dict with at least ``slide_id``; slide facts are added to it.
        config: tiling, sampling and loader options.
        encoder: the image encoder.
        mpp: microns per pixel given for this slide (``--mpp`` or the metadata's ``mpp``); None: the file's.
        timings: stage → seconds, accumulated in place.
        progress: progress bars.

    Raises:
        UserError: unreadable slide, no MPP, or no tissue.
    """
    timings = timings if timings is not None else defaultdict(float)
    progress = progress or StageProgress(enabled=False)
    from indexer.embedding import iter_slide_embeddings
    from indexer.slides import open_slide
    from indexer.tiling import tile_slide
    from indexer.tissue import detect_tissue

    if config.slide_features_dir is not None:  # before any pixel is read: a missing file fails the slide at once
        from indexer.slide_features import RECORD_KEY, read_slide_embedding

        vector = read_slide_embedding(config.slide_features_dir, record["slide_id"])
        record[RECORD_KEY] = {config.slide_encoder: vector.tolist()}
    t0 = time.perf_counter()
    with open_slide(path, mpp=mpp, require_mpp=config.features_dir is None) as slide:
        facts = slide.facts()
        record.update(
            vendor=slide.vendor, width=slide.dimensions[0], height=slide.dimensions[1], mpp=slide.mpp,
            mpp_source=slide.mpp_source, magnification=slide.magnification, status="ok", error=None,
        )
        timings["open"] += time.perf_counter() - t0
        if config.features_dir is not None:
            _detect_stain(slide, None, record, timings)
            return _import_features(record, config, encoder, slide, timings)
        t0 = time.perf_counter()
        mask = detect_tissue(slide)
        timings["tissue"] += time.perf_counter() - t0
        _detect_stain(slide, mask, record, timings)
        t0 = time.perf_counter()
        grid = tile_slide(slide, config.tiling, mask)
        grid = subsample_grid(grid, config.max_patches, seed=record["slide_id"])
        timings["tile"] += time.perf_counter() - t0
    if len(grid) == 0:
        raise UserError(f"no tissue found (0 patches at {config.tiling.magnification:g}x, min tissue {config.tiling.min_tissue})")
    record["level"] = grid.level
    t0 = time.perf_counter()
    progress.start_patches(len(grid))
    feats = np.zeros((len(grid), encoder.dim), np.float16)
    # Starting reader processes costs more than reading a couple of batches in-process.
    workers = config.num_workers if len(grid) > 2 * config.batch_size else 0
    for rows, emb in iter_slide_embeddings(
        path, grid, encoder, mpp=facts["mpp"], batch_size=config.batch_size, num_workers=workers
    ):
        feats[rows] = emb
        progress.advance_patches(len(rows))
    timings["embed"] += time.perf_counter() - t0
    return StagedSlide(record, grid.coords, feats, grid.size)


def _detect_stain(slide, mask, record, timings) -> None:
    """Record the detected stain (H&E or IHC) of the slide (``indexer/stain.py``)."""
    from indexer.stain import detect_slide_stain, stain_record

    t0 = time.perf_counter()
    record.update(stain_record(detect_slide_stain(slide, mask)))
    timings["stain"] += time.perf_counter() - t0


def _import_features(record, config, encoder, slide, timings) -> StagedSlide:
    from indexer.features_import import find_features_file, read_features_h5
    from indexer.tiling import patch_geometry

    t0 = time.perf_counter()
    coords, feats, size = read_features_h5(find_features_file(config.features_dir, record["slide_id"]), encoder.dim)
    if size is None:
        if slide.mpp is None:
            raise UserError("features file has no patch size and the slide has no MPP; pass --mpp")
        size = patch_geometry(slide, config.tiling)[0]
    timings["import features"] += time.perf_counter() - t0
    return StagedSlide(record, coords, feats.astype(np.float16), int(size))


def subsample_grid(grid, max_patches: int | None, seed: str):
    """Keep at most ``max_patches`` patches, a deterministic (per-slide) random subset in grid order."""
    import dataclasses

    if not max_patches or len(grid) <= max_patches:
        return grid
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:16], 16))
    keep = np.sort(rng.choice(len(grid), size=max_patches, replace=False))
    return dataclasses.replace(grid, coords=grid.coords[keep])
