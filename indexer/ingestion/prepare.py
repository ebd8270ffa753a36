"""Prepare one slide for encoding: hash, open, detect tissue and stain, tile (everything before its patches).

Reader processes run this for the next slides while the encoder works on the current one (``readers.py``).
"""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import UserError

if TYPE_CHECKING:
    from indexer.tiles.tiling import TileGrid, TilingConfig


@dataclass(frozen=True)
class PrepareOptions:
    """What preparing a slide needs of a run's IndexConfig (small to send to a reader process)."""

    tiling: "TilingConfig"
    max_patches: int | None = None
    slide_features_dir: str | None = None  # TRIDENT slide-encoder .h5 files (indexer/aggregation/slide_features.py)
    slide_encoder: str | None = None

    @classmethod
    def of(cls, config) -> "PrepareOptions":
        """The options of an IndexConfig."""
        return cls(config.tiling, config.max_patches, config.slide_features_dir, config.slide_encoder)


@dataclass
class PreparedSlide:
    """A slide ready for its patches to be read, or why it cannot be.

    Attributes:
        record: the slide's facts (sha256, vendor, size, MPP, stain, level …), updated in place as they are learnt.
        grid: its patch grid (None when it failed).
        mpp: the MPP override it was opened with (readers reopen it the same way).
        timings: stage → seconds (hash, open, tissue, stain, tile).
        error: why it failed, in one line; None when it is ready.
    """

    record: dict[str, Any]
    grid: "TileGrid | None"
    mpp: float | None = None
    timings: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def prepare_slide(path, record: dict[str, Any], config: "PrepareOptions", mpp: float | None = None,
                  timings: dict[str, float] | None = None, *, tile: bool = True, hash_file: bool = True) -> PreparedSlide:
    """Hash (when asked and ``record`` has no sha256), open, detect tissue and stain, and tile one slide.

    Args:
        path: the slide file or DICOM folder.
        record: dict with at least ``slide_id``; slide facts are added to it.
        config: tiling, sampling and slide-feature options (an IndexConfig, or its :class:`PrepareOptions`).
        mpp: microns per pixel given for this slide; None: the file's.
        timings: stage → seconds, accumulated in place.
        tile: detect tissue and tile (False: open and detect the stain only, for imported features).
        hash_file: compute the file's sha256 into ``record`` when it has none.

    Raises:
        UserError: unreadable slide, no MPP, or no tissue.
    """
    from indexer.models.encoders import file_sha256
    from indexer.slides import open_slide
    from indexer.tiles.tiling import tile_slide
    from indexer.tiles.tissue import detect_tissue

    timings = timings if timings is not None else defaultdict(float)
    t0 = time.perf_counter()
    if hash_file and not record.get("sha256"):
        record["sha256"] = file_sha256(path)
        _add(timings, "hash", t0)
    if config.slide_features_dir is not None:  # before any pixel is read: a missing file fails the slide at once
        from indexer.aggregation.slide_features import RECORD_KEY, read_slide_embedding

        vector = read_slide_embedding(config.slide_features_dir, record["slide_id"])
        record[RECORD_KEY] = {config.slide_encoder: vector.tolist()}
    t0 = time.perf_counter()
    with open_slide(path, mpp=mpp, require_mpp=tile) as slide:
        record.update(
            vendor=slide.vendor, width=slide.dimensions[0], height=slide.dimensions[1], mpp=slide.mpp,
            mpp_source=slide.mpp_source, magnification=slide.magnification, status="ok", error=None,
        )
        _add(timings, "open", t0)
        if not tile:
            detect_stain_into(slide, None, record, timings)
            return PreparedSlide(record, None, mpp, timings)
        t0 = time.perf_counter()
        mask = detect_tissue(slide)
        _add(timings, "tissue", t0)
        detect_stain_into(slide, mask, record, timings)
        t0 = time.perf_counter()
        grid = subsample_grid(tile_slide(slide, config.tiling, mask), config.max_patches, seed=record["slide_id"])
        _add(timings, "tile", t0)
    if len(grid) == 0:
        raise UserError(f"no tissue found (0 patches at {config.tiling.magnification:g}x, min tissue {config.tiling.min_tissue})")
    record["level"] = grid.level
    return PreparedSlide(record, grid, mpp, timings)


def detect_stain_into(slide, mask, record: dict[str, Any], timings: dict[str, float]) -> None:
    """Record the detected stain (H&E or IHC) of the slide (``indexer/tiles/stain.py``)."""
    from indexer.tiles.stain import detect_slide_stain, stain_record

    t0 = time.perf_counter()
    record.update(stain_record(detect_slide_stain(slide, mask)))
    _add(timings, "stain", t0)


def subsample_grid(grid, max_patches: int | None, seed: str):
    """Keep at most ``max_patches`` patches, a deterministic (per-slide) random subset in grid order."""
    import dataclasses

    if not max_patches or len(grid) <= max_patches:
        return grid
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:16], 16))
    keep = np.sort(rng.choice(len(grid), size=max_patches, replace=False))
    return dataclasses.replace(grid, coords=grid.coords[keep])


def _add(timings: dict[str, float], stage: str, since: float) -> None:
    timings[stage] = timings.get(stage, 0.0) + time.perf_counter() - since
