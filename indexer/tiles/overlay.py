"""A thumbnail with the tissue outline and patch grid drawn on it, to check tiling by eye."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from indexer.slides import Slide
from indexer.tiles.tiling import TileGrid
from indexer.tiles.tissue import TissueMask

OUTLINE_RGB = (0, 170, 0)
GRID_RGB = (20, 60, 230)


def render_tiling_thumbnail(slide: Slide, grid: TileGrid, mask: TissueMask, out_path: str | Path,
                            max_px: int = 1024) -> Path:
    """Write a PNG: slide thumbnail, tissue outline (green) and kept patches (blue squares).

    Args:
        slide: the open slide.
        grid: its patch grid.
        mask: the tissue mask the grid was computed from.
        out_path: PNG file to write (parent folders are created).
        max_px: longer side of the thumbnail.

    Returns:
        The written path.
    """
    from skimage.segmentation import find_boundaries

    thumb = slide.thumbnail(max_px).convert("RGB")
    scale = thumb.width / slide.dimensions[0]
    resized = Image.fromarray(mask.mask).resize(thumb.size, Image.Resampling.NEAREST)
    outline = find_boundaries(np.asarray(resized), mode="inner")
    pixels = np.asarray(thumb).copy()
    pixels[outline] = OUTLINE_RGB
    image = draw_squares(Image.fromarray(pixels), [(x, y, grid.size) for x, y in grid.coords], scale, GRID_RGB)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    image.save(out_path)
    return out_path


def draw_squares(image: Image.Image, squares, scale: float, colour: tuple[int, int, int], width: int = 1) -> Image.Image:
    """Outline level-0 squares ``(x, y, size)`` on a thumbnail drawn at ``scale`` thumbnail px per level-0 px."""
    draw = ImageDraw.Draw(image)
    for x, y, size in squares:
        x0, y0 = x * scale, y * scale
        draw.rectangle((x0, y0, x0 + size * scale, y0 + size * scale), outline=colour, width=width)
    return image
