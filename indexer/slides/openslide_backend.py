"""Pyramidal slides read through OpenSlide (SVS, NDPI, MRXS, SCN, tiled TIFF …), tile by tile.

For Aperio and generic tiled TIFFs, regions on whole level pixels are decoded straight from the file's
tiles (``tiff_tiles.py``), which gives OpenSlide's pixels several times faster; everything else goes
through OpenSlide.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.slides.limits import THUMBNAIL_READ_PIXELS
from indexer.slides.plain import WHITE

DIRECT_VENDORS = ("aperio", "generic-tiff")  # plain mosaics of tiles, one TIFF page per level


def try_openslide(path: Path) -> "OpenSlideBackend | None":
    """The file opened with OpenSlide, or None when OpenSlide does not recognise or cannot open it."""
    import openslide

    try:
        return OpenSlideBackend(openslide.OpenSlide(str(path)), path)
    except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError):
        return None


class OpenSlideBackend:
    """Levels, properties and RGB reads of an open ``openslide.OpenSlide``."""

    def __init__(self, osr: Any, path: Path | None = None):
        import openslide

        self.osr, self.path = osr, path
        props = osr.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "generic-tiff"
        self.level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.objective_power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
        self._tiles: Any = None if path is not None and self.vendor in DIRECT_VENDORS else False
        self._opening = threading.Lock()

    def metadata_mpp(self) -> tuple[Any, str]:
        """(``openslide.mpp-x`` as stored, source), unchecked."""
        return self.osr.properties.get("openslide.mpp-x"), "openslide.mpp-x"

    def read_array(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        """RGB region as a (h, w, 3) uint8 array (level-0 ``x, y``; ``w, h`` at ``level``), transparent parts on white."""
        tiles = self._direct()
        pixels = tiles.region(x, y, level, w, h) if tiles else None
        return pixels if pixels is not None else self._openslide_array(x, y, level, w, h)

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> Image.Image:
        """RGB region (level-0 ``x, y``; ``w, h`` at ``level``), transparent parts on white."""
        return Image.fromarray(self.read_array(x, y, level, w, h), "RGB")

    def _openslide_array(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
        rgba = self.osr.read_region((x, y), level, (w, h))
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return np.asarray(out)

    def _direct(self):
        """The direct tile reader, opened on first use; None when this file has none."""
        if self._tiles is None:
            from indexer.slides.tiff_tiles import TiffTiles

            with self._opening:
                if self._tiles is None:
                    try:
                        self._tiles = TiffTiles(self.path, self.level_dimensions, self.level_downsamples,
                                                self._openslide_array)
                    except Exception:  # noqa: BLE001 - not a plain tiled TIFF pyramid: OpenSlide reads it
                        self._tiles = False
        return self._tiles or None

    def thumbnail(self, max_px: int) -> Image.Image:
        """OpenSlide's thumbnail (its level, LANCZOS) when its level is small; otherwise read in chunks (bounded memory)."""
        from indexer.slides.thumbnail import chunked_thumbnail, level_thumbnail, thumbnail_level

        if self._direct() is not None:  # the same level and filter as get_thumbnail, on white
            return level_thumbnail(self, max_px)
        level = thumbnail_level(self, max_px)
        w, h = self.level_dimensions[level]
        if w * h <= THUMBNAIL_READ_PIXELS:
            return self.osr.get_thumbnail((max_px, max_px)).convert("RGB")
        return chunked_thumbnail(self, level, max_px)

    def close(self) -> None:
        """Close the OpenSlide handle (and the direct reader)."""
        if self._tiles:
            self._tiles.close()
        self._tiles = False
        self.osr.close()
