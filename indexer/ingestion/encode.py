"""Encode one slide: prepare it (``prepare.py``), then embed its patches (or import its features)."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import UserError
from indexer.progress import StageProgress
from indexer.store.staging import StagedSlide

if TYPE_CHECKING:
    from indexer.ingestion.config import IndexConfig


def file_facts(path: Path) -> dict[str, Any]:
    """Size and modification time of a slide file, or of every file in a slide folder (DICOM-WSI)."""
    if path.is_dir():
        stats = [p.stat() for p in path.rglob("*") if p.is_file()]
        return {"size_bytes": sum(s.st_size for s in stats), "mtime_ns": max((s.st_mtime_ns for s in stats), default=0)}
    stat = path.stat()
    return {"size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def encode_slide(path, record, config: "IndexConfig", encoder, mpp: float | None = None, timings=None,
                 progress=None) -> StagedSlide:
    """Open, detect tissue, tile and embed one slide (or import its features), in this process.

    Many slides are encoded faster by ``indexer.ingestion.stream.SlideStream`` (reader processes for a whole run);
    this is the one-slide path (a query slide, imported features).

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
    from indexer.ingestion.embedding import iter_slide_embeddings
    from indexer.ingestion.prepare import prepare_slide

    timings = timings if timings is not None else defaultdict(float)
    progress = progress or StageProgress(enabled=False)
    if config.features_dir is not None:
        prepare_slide(path, record, config, mpp, timings, tile=False, hash_file=False)
        return _import_features(path, record, config, encoder, mpp, timings)
    grid = prepare_slide(path, record, config, mpp, timings, hash_file=False).grid
    t0 = time.perf_counter()
    progress.start_patches(len(grid))
    feats = np.zeros((len(grid), encoder.dim), np.float16)
    for rows, emb in iter_slide_embeddings(path, grid, encoder, mpp=mpp, batch_size=config.batch_size,
                                           num_workers=0):
        feats[rows] = emb
        progress.advance_patches(len(rows))
    timings["embed"] += time.perf_counter() - t0
    return StagedSlide(record, grid.coords, feats, grid.size)


def _import_features(path, record, config, encoder, mpp, timings) -> StagedSlide:
    from indexer.ingestion.features_import import find_features_file, read_features_h5
    from indexer.slides import open_slide
    from indexer.tiles.tiling import patch_geometry

    t0 = time.perf_counter()
    coords, feats, size = read_features_h5(find_features_file(config.features_dir, record["slide_id"]), encoder.dim)
    if size is None:
        if record.get("mpp") is None:
            raise UserError("features file has no patch size and the slide has no MPP; pass --mpp")
        with open_slide(path, mpp=mpp, require_mpp=False) as slide:
            size = patch_geometry(slide, config.tiling)[0]
    timings["import features"] += time.perf_counter() - t0
    return StagedSlide(record, coords, feats.astype(np.float16), int(size))
