"""Thumbnails of pyramidal slides in bounded memory: a small level is read whole, a large one in chunks."""

from __future__ import annotations

import math

from PIL import Image

from indexer.slides.limits import THUMBNAIL_READ_PIXELS
from indexer.slides.plain import WHITE

CHUNK_PX = 2048  # side of one read, in pixels of the thumbnail's level


def thumbnail_level(backend, max_px: int) -> int:
    """The smallest level still at least as detailed as a ``max_px`` thumbnail (OpenSlide's choice)."""
    width, height = backend.level_dimensions[0]
    target = max(width / max_px, height / max_px)
    fitting = [i for i, d in enumerate(backend.level_downsamples) if d <= target]
    return max(fitting) if fitting else 0


def level_thumbnail(backend, max_px: int) -> Image.Image:
    """RGB thumbnail (longer side ≤ ``max_px``) from any backend with levels and ``read_region``."""
    level = thumbnail_level(backend, max_px)
    width, height = backend.level_dimensions[level]
    if width * height > THUMBNAIL_READ_PIXELS:
        return chunked_thumbnail(backend, level, max_px)
    image = backend.read_region(0, 0, level, width, height)
    image.thumbnail((max_px, max_px), Image.Resampling.LANCZOS)
    return image


def chunked_thumbnail(backend, level: int, max_px: int) -> Image.Image:
    """Thumbnail of ``level`` read ``CHUNK_PX``-square piece by piece, each piece box-filtered into place."""
    width, height = backend.level_dimensions[level]
    downsample = backend.level_downsamples[level]
    ratio = min(max_px / width, max_px / height, 1.0)
    tw, th = max(1, round(width * ratio)), max(1, round(height * ratio))
    chunk = max(CHUNK_PX, math.ceil(width / tw), math.ceil(height / th))
    out = Image.new("RGB", (tw, th), WHITE)
    for cy in range(0, height, chunk):
        y0, y1 = cy * th // height, min(cy + chunk, height) * th // height
        for cx in range(0, width, chunk):
            x0, x1 = cx * tw // width, min(cx + chunk, width) * tw // width
            if x1 <= x0 or y1 <= y0:
                continue
            cw, ch = min(chunk, width - cx), min(chunk, height - cy)
            piece = backend.read_region(round(cx * downsample), round(cy * downsample), level, cw, ch)
            out.paste(piece.resize((x1 - x0, y1 - y0), Image.Resampling.BOX), (x0, y0))
    return out
