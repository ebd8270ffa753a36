"""Pyramidal slides read through OpenSlide (SVS, NDPI, MRXS, SCN, tiled TIFF …), tile by tile."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image

from indexer.slides.limits import THUMBNAIL_READ_PIXELS
from indexer.slides.plain import WHITE


def try_openslide(path: Path) -> "OpenSlideBackend | None":
    """The file opened with OpenSlide, or None when OpenSlide does not recognise or cannot open it."""
    import openslide

    try:
        return OpenSlideBackend(openslide.OpenSlide(str(path)))
    except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError):
        return None


class OpenSlideBackend:
    """Levels, properties and RGB reads of an open ``openslide.OpenSlide``."""

    def __init__(self, osr: Any):
        import openslide

        self.osr = osr
        props = osr.properties
        self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "generic-tiff"
        self.level_dimensions = tuple((int(w), int(h)) for w, h in osr.level_dimensions)
        self.level_downsamples = tuple(float(d) for d in osr.level_downsamples)
        self.objective_power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)

    def metadata_mpp(self) -> tuple[Any, str]:
        """(``openslide.mpp-x`` as stored, source), unchecked."""
        return self.osr.properties.get("openslide.mpp-x"), "openslide.mpp-x"

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> Image.Image:
        """RGB region (level-0 ``x, y``; ``w, h`` at ``level``), transparent parts on white."""
        rgba = self.osr.read_region((x, y), level, (w, h))
        out = Image.new("RGB", rgba.size, WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out

    def thumbnail(self, max_px: int) -> Image.Image:
        """OpenSlide's thumbnail when its level is small; otherwise read in chunks (bounded memory)."""
        from indexer.slides.thumbnail import chunked_thumbnail, thumbnail_level

        level = thumbnail_level(self, max_px)
        w, h = self.level_dimensions[level]
        if w * h <= THUMBNAIL_READ_PIXELS:
            return self.osr.get_thumbnail((max_px, max_px)).convert("RGB")
        return chunked_thumbnail(self, level, max_px)

    def close(self) -> None:
        """Close the OpenSlide handle."""
        self.osr.close()
