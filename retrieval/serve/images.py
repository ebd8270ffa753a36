"""Pixels of indexed slides for the page: DeepZoom (.dzi and tiles), thumbnails and patch crops.

Every slide is opened through ``indexer.slides.open_slide`` (OpenSlide, DICOM-WSI folders and DICOMweb series,
plain images), so DeepZoom works for every source the indexer reads; only paths stored in the index are ever opened.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from typing import Any

from indexer.errors import LimitError, QueryError
from indexer.slides.limits import over_limit

TILE_SIZE, OVERLAP = 254, 1
MAX_THUMBNAIL_PX = 1024
MAX_CROP_PX = 512
OPEN_SLIDES = 16  # slides kept open
CACHED_IMAGES = 256  # encoded thumbnails, crops and DICOMweb tiles kept


class _DeepZoomSource:
    """The part of ``openslide.AbstractSlide`` that ``DeepZoomGenerator`` reads, over an ``indexer.slides.Slide``."""

    properties: dict[str, str] = {}

    def __init__(self, slide: Any):
        self.slide = slide
        self.dimensions = slide.dimensions
        self.level_count = slide.level_count
        self.level_dimensions = slide.level_dimensions
        self.level_downsamples = slide.level_downsamples
        # OpenSlide reads concurrently; other backends (plain images, wsidicom) one read at a time
        self._lock = None if slide.reads_concurrently else threading.Lock()

    def get_best_level_for_downsample(self, downsample: float) -> int:
        return self.slide.best_level_for_downsample(downsample)

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        if self._lock is None:
            return self.slide.read_region(location, level, size).convert("RGBA")
        with self._lock:
            return self.slide.read_region(location, level, size).convert("RGBA")


class SlideImages:
    """Open slides (a small LRU of them) and the images the page asks for, keyed by the slide's stored path."""

    def __init__(self, open_slides: int = OPEN_SLIDES, cached_images: int = CACHED_IMAGES):
        self._slides: OrderedDict[tuple, tuple[_DeepZoomSource, Any]] = OrderedDict()
        self._images: OrderedDict[tuple, bytes] = OrderedDict()
        self._open_slides, self._cached_images = open_slides, cached_images
        self._lock = threading.Lock()

    def _open(self, meta: dict[str, Any]) -> tuple[_DeepZoomSource, Any]:
        from openslide.deepzoom import DeepZoomGenerator

        from indexer.slides import open_slide

        key = (meta["path"], meta.get("mpp"))
        with self._lock:
            if key in self._slides:
                self._slides.move_to_end(key)
                return self._slides[key]
        source = _DeepZoomSource(open_slide(meta["path"], mpp=meta.get("mpp"), require_mpp=False))
        entry = (source, DeepZoomGenerator(source, tile_size=TILE_SIZE, overlap=OVERLAP))
        with self._lock:
            self._slides[key] = entry
            while len(self._slides) > self._open_slides:
                self._slides.popitem(last=False)  # closed when the last request using it lets go
        return entry

    def dzi(self, meta: dict[str, Any]) -> str:
        """The DeepZoom descriptor (XML) of a slide; its full-resolution level is level 0."""
        return self._open(meta)[1].get_dzi("jpeg")

    def tile(self, meta: dict[str, Any], level: int, col: int, row: int) -> bytes:
        """One JPEG DeepZoom tile; QueryError for a level or address the slide does not have.

        Tiles of DICOMweb slides (frames fetched over HTTP) are kept in the bounded image cache.
        """
        from indexer.slides.dicomweb import is_dicomweb

        _, dz = self._open(meta)
        if not 0 <= level < dz.level_count:
            raise QueryError(f"DeepZoom level {level} does not exist (the slide has {dz.level_count})")
        cols, rows = dz.level_tiles[level]
        if not (0 <= col < cols and 0 <= row < rows):
            raise QueryError(f"DeepZoom tile {col}_{row} does not exist at level {level} ({cols}x{rows} tiles)")
        if is_dicomweb(meta["path"]):
            return self._cached(("tile", meta["path"], level, col, row),
                                lambda: _encode(dz.get_tile(level, (col, row)), "JPEG"))
        return _encode(dz.get_tile(level, (col, row)), "JPEG")

    def thumbnail(self, meta: dict[str, Any], max_px: int) -> bytes:
        """A PNG thumbnail whose longer side is at most ``max_px`` (≤ MAX_THUMBNAIL_PX)."""
        if not 16 <= max_px <= MAX_THUMBNAIL_PX:
            raise LimitError(f"max_px must be between 16 and {MAX_THUMBNAIL_PX} (got {max_px})")
        return self._cached(("thumb", meta["path"], max_px),
                            lambda: _encode(self._open(meta)[0].slide.thumbnail(max_px), "PNG"))

    def crop(self, meta: dict[str, Any], x: int, y: int, w: int, h: int, max_px: int) -> bytes:
        """A JPEG of a level-0 rectangle, read at the pyramid level that gives at most ``max_px`` a side."""
        if not 16 <= max_px <= MAX_CROP_PX:
            raise LimitError(f"max_px must be between 16 and {MAX_CROP_PX} (got {max_px})")
        source = self._open(meta)[0]
        width, height = source.dimensions
        if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
            raise QueryError(f"region {x},{y},{w},{h} lies outside the slide ({width}x{height})")

        def read() -> bytes:
            downsample = max(w, h) / max_px
            level = source.get_best_level_for_downsample(max(1.0, downsample))
            ds = source.level_downsamples[level]
            size = (max(1, round(w / ds)), max(1, round(h / ds)))
            why = over_limit(*size, "MAX_QUERY_PIXELS")  # a slide without a fitting pyramid level
            if why:
                raise LimitError(f"region {x},{y},{w},{h}: its read at level {level}, {why}")
            image = source.read_region((x, y), level, size).convert("RGB")
            image.thumbnail((max_px, max_px))
            return _encode(image, "JPEG")

        return self._cached(("crop", meta["path"], x, y, w, h, max_px), read)

    def _cached(self, key: tuple, make) -> bytes:
        with self._lock:
            if key in self._images:
                self._images.move_to_end(key)
                return self._images[key]
        data = make()
        with self._lock:
            self._images[key] = data
            while len(self._images) > self._cached_images:
                self._images.popitem(last=False)
        return data


def _encode(image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **({"quality": 85} if fmt == "JPEG" else {}))
    return buffer.getvalue()
