"""Patch grid at a target magnification over the tissue of a slide (coordinates in level-0 px)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from indexer.errors import SlideError
from indexer.slides import Slide
from indexer.slides.limits import MAX_READ_PIXELS
from indexer.tiles.tissue import TissueMask, detect_tissue

_GRID_CHUNK = 1 << 20  # grid cells scored per pass


@dataclass(frozen=True)
class TilingConfig:
    """Patch grid settings: magnification (10 / µm per px), patch side in px, minimum tissue fraction."""

    magnification: float = 20.0
    patch_px: int = 224
    min_tissue: float = 0.5


@dataclass(frozen=True, eq=False)
class TileGrid:
    """Kept patches of a slide.

    Attributes:
        coords: (n, 2) int64 level-0 top-left (x, y), row-major (y, then x).
        size: patch side in level-0 px.
        level: pyramid level patches are read from.
        read_px: side read at ``level`` (resized to ``patch_px`` when different).
        patch_px: side of the returned patch images.
    """

    coords: np.ndarray
    size: int
    level: int
    read_px: int
    patch_px: int

    def __len__(self) -> int:
        return int(self.coords.shape[0])


def patch_geometry(slide: Slide, config: TilingConfig) -> tuple[int, int, int]:
    """(level-0 patch side, pyramid level, side to read at that level) for ``config`` on ``slide``.

    Raises:
        SlideError: the slide has no MPP, or the magnification/patch size is not positive.
    """
    if slide.mpp is None:
        raise SlideError(f"{slide.path}: has no microns-per-pixel; pass --mpp (e.g. --mpp 0.5 for 20x)")
    if config.magnification <= 0 or config.patch_px <= 0:
        raise SlideError(f"magnification and patch size must be positive, got {config.magnification}x, "
                         f"{config.patch_px} px")
    target_mpp = 10.0 / config.magnification
    size = max(1, round(config.patch_px * target_mpp / slide.mpp))
    level = slide.best_level_for_downsample(size / config.patch_px)
    read_px = max(1, round(size / slide.level_downsamples[level]))
    if read_px * read_px > MAX_READ_PIXELS:
        raise SlideError(f"{slide.path}: {config.patch_px}-px patches at {config.magnification:g}x need "
                         f"{read_px}x{read_px}-px reads from level {level} (the slide has no level near that "
                         f"magnification; limit {MAX_READ_PIXELS:,} px); use a higher --mag")
    return size, level, read_px


def tile_slide(slide: Slide, config: TilingConfig = TilingConfig(), mask: TissueMask | None = None) -> TileGrid:
    """Non-overlapping grid aligned at (0, 0), keeping patches whose tissue fraction ≥ ``min_tissue``.

    Args:
        slide: an open slide with a known MPP.
        config: magnification, patch size and tissue threshold.
        mask: a precomputed tissue mask (computed with default settings when omitted).

    Returns:
        A :class:`TileGrid` in deterministic row-major order.
    """
    size, level, read_px = patch_geometry(slide, config)
    if mask is None:
        mask = detect_tissue(slide)
    width, height = slide.dimensions
    xs = np.arange(0, width, size, dtype=np.int64)
    ys = np.arange(0, height, size, dtype=np.int64)
    kept = [np.zeros((0, 2), np.int64)]
    rows = max(1, _GRID_CHUNK // max(1, len(xs)))  # grid rows per pass: memory bounded by the kept patches
    for start in range(0, len(ys), rows):
        grid_y, grid_x = np.meshgrid(ys[start:start + rows], xs, indexing="ij")
        coords = np.stack([grid_x.ravel(), grid_y.ravel()], axis=1)
        fractions = mask.fraction(coords[:, 0], coords[:, 1], size) if len(coords) else np.zeros(0)
        kept.append(coords[np.asarray(fractions) >= config.min_tissue])
    return TileGrid(np.ascontiguousarray(np.concatenate(kept)), size, level, read_px, config.patch_px)


def read_patch(slide: Slide, grid: TileGrid, index: int) -> Image.Image:
    """The RGB patch ``index`` of ``grid``: ``read_px`` read at ``grid.level``, resized to ``patch_px``."""
    x, y = (int(v) for v in grid.coords[index])
    return Image.fromarray(read_patch_array(slide, grid.level, grid.read_px, grid.patch_px, x, y), "RGB")


def read_patch_array(slide: Slide, level: int, read_px: int, patch_px: int, x: int, y: int) -> np.ndarray:
    """The (patch_px, patch_px, 3) uint8 patch at level-0 (x, y): ``read_px`` read at ``level``, resized (bilinear,
    as Pillow does) to ``patch_px`` when they differ."""
    patch = slide.read_array((x, y), level, (read_px, read_px))
    if read_px != patch_px:
        resized = Image.fromarray(patch, "RGB").resize((patch_px, patch_px), Image.Resampling.BILINEAR, reducing_gap=None)
        patch = np.asarray(resized)
    return patch
