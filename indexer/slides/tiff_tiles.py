"""Regions of a TIFF pyramid decoded straight from the slide's own tiles (tifffile + imagecodecs).

OpenSlide spends most of a ``read_region`` on its own compositing and pixel-format conversions; decoding
the same JPEG/JPEG 2000/deflate tiles with imagecodecs and copying them into place gives the same pixels
several times faster (``benchmarks/ingest.py``). It is used only where it gives exactly OpenSlide's pixels:

- every pyramid level OpenSlide reports is a tiled, 8-bit, 3-sample, contiguous TIFF page of the same size;
- the region starts on a whole pixel of its level (OpenSlide interpolates fractional offsets);
- the first region read at each level is also read through OpenSlide, and a single differing byte turns
  the direct path off for that slide (a decoder that disagrees with OpenSlide's is never trusted).

Missing tiles (byte count 0) and areas past the level's edge are white, as OpenSlide's transparent pixels
composited on white are.
"""

from __future__ import annotations

import itertools
import os
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable

import numpy as np

CACHE_BYTES = 48 << 20  # decoded tiles kept per process, all open slides together (rows of tiles of a 100k-px level)
_PHOTOMETRIC = (2, 6)  # RGB, YCbCr
PROBE_PX = 64  # side of the region read both ways before a level is trusted (a decoder's differences show in any block)


class _TileCache:
    """The process's decoded tiles, least recently used dropped first, within CACHE_BYTES for every slide together
    (a reader or a server keeps several slides open); thread-safe."""

    def __init__(self):
        self._tiles: OrderedDict[tuple, np.ndarray] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._owners = itertools.count()

    def owner(self) -> int:
        """A key prefix for one open slide."""
        return next(self._owners)

    def get(self, key: tuple) -> np.ndarray | None:
        with self._lock:
            tile = self._tiles.get(key)
            if tile is not None:
                self._tiles.move_to_end(key)
            return tile

    def put(self, key: tuple, tile: np.ndarray) -> None:
        with self._lock:
            if key in self._tiles:
                return
            self._tiles[key] = tile
            self._bytes += tile.nbytes
            while self._bytes > CACHE_BYTES and len(self._tiles) > 1:
                self._bytes -= self._tiles.popitem(last=False)[1].nbytes

    def drop(self, owner: int) -> None:
        """Forget one slide's tiles."""
        with self._lock:
            for key in [k for k in self._tiles if k[0] == owner]:
                self._bytes -= self._tiles.pop(key).nbytes


_CACHE = _TileCache()


class TiffTiles:
    """Direct tile decoding for the levels of one TIFF pyramid (decoded tiles kept in the process's cache).

    Args:
        path: the TIFF/SVS file.
        level_dimensions: OpenSlide's (width, height) per level.
        level_downsamples: OpenSlide's downsample per level.
        reference: ``reference(x, y, level, w, h)`` → OpenSlide's RGB region (level-0 x, y) as a uint8
            array, used to check the first region read at each level.

    Raises:
        ValueError: the file's levels cannot be decoded directly (the caller keeps OpenSlide).
    """

    def __init__(self, path: str | Path, level_dimensions, level_downsamples, reference: Callable[..., np.ndarray]):
        import tifffile

        self.downsamples = tuple(float(d) for d in level_downsamples)
        self._tif = tifffile.TiffFile(str(path))
        try:
            self.pages = [_level_page(self._tif, tuple(dims)) for dims in level_dimensions]
        except BaseException:
            self._tif.close()
            raise
        self._fd = os.open(str(path), os.O_RDONLY)
        self._reference = reference
        self._checked: set[int] = set()
        self._owner = _CACHE.owner()
        self.enabled = True

    def region(self, x: int, y: int, level: int, w: int, h: int) -> np.ndarray | None:
        """RGB pixels (h, w, 3) of ``level`` at level-0 (x, y), as OpenSlide's ``read_region`` would give them
        composited on white; None where the direct path does not apply (the caller reads through OpenSlide)."""
        lx, ly = x / self.downsamples[level], y / self.downsamples[level]
        if not (self.enabled and lx.is_integer() and ly.is_integer()):
            return None
        try:
            out = self._assemble(level, int(lx), int(ly), w, h)
        except Exception:  # noqa: BLE001 - a codec missing or disagreeing: OpenSlide reads this slide (and reports)
            self._disable()
            return None
        if level not in self._checked:
            agrees = self._agrees(int(lx), int(ly), level, out)
            self._checked.add(level)
            if not agrees:
                self._disable()
                return None
        return out

    def _disable(self) -> None:
        self.enabled = False
        _CACHE.drop(self._owner)

    def _agrees(self, lx: int, ly: int, level: int, out: np.ndarray) -> bool:
        """OpenSlide gives the same bytes for a probe of the region (at most PROBE_PX square): its centre when
        that lies on a whole level-0 pixel, else its top-left corner."""
        ph, pw = min(out.shape[0], PROBE_PX), min(out.shape[1], PROBE_PX)
        ds = self.downsamples[level]
        for dx, dy in (((out.shape[1] - pw) // 2, (out.shape[0] - ph) // 2), (0, 0)):
            x, y = round((lx + dx) * ds), round((ly + dy) * ds)
            if x / ds == lx + dx and y / ds == ly + dy:
                break
        try:
            expected = self._reference(x, y, level, pw, ph)
        except Exception:  # noqa: BLE001 - OpenSlide's own error surfaces on its own read
            return False
        return bool(np.array_equal(expected, out[dy:dy + ph, dx:dx + pw]))

    def _assemble(self, level: int, lx: int, ly: int, w: int, h: int) -> np.ndarray:
        page = self.pages[level]
        width, height = int(page.imagewidth), int(page.imagelength)
        tw, th = int(page.tilewidth), int(page.tilelength)
        across = -(-width // tw)
        out = np.full((h, w, 3), 255, np.uint8)
        x0, y0, x1, y1 = max(lx, 0), max(ly, 0), min(lx + w, width), min(ly + h, height)
        for ty in range(y0 // th, -(-y1 // th)) if y1 > y0 and x1 > x0 else ():
            for tx in range(x0 // tw, -(-x1 // tw)):
                tile = self._tile(level, page, ty * across + tx)
                if tile is None:
                    continue
                sx0, sy0 = max(x0, tx * tw), max(y0, ty * th)
                sx1, sy1 = min(x1, (tx + 1) * tw), min(y1, (ty + 1) * th)
                out[sy0 - ly:sy1 - ly, sx0 - lx:sx1 - lx] = tile[sy0 - ty * th:sy1 - ty * th, sx0 - tx * tw:sx1 - tx * tw]
        return out

    def _tile(self, level: int, page: Any, index: int) -> np.ndarray | None:
        key = (self._owner, level, index)
        tile = _CACHE.get(key)
        if tile is not None:
            return tile
        count = int(page.databytecounts[index])
        if count == 0:
            return None
        data = os.pread(self._fd, count, int(page.dataoffsets[index]))
        decoded = page.decode(data, index, jpegtables=page.jpegtables)[0]
        tile = np.asarray(decoded).reshape(int(page.tilelength), int(page.tilewidth), -1)[..., :3]
        _CACHE.put(key, tile)
        return tile

    def close(self) -> None:
        """Close the file (and drop the cache)."""
        self._disable()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._tif.close()


def _level_page(tif: Any, dims: tuple[int, int]) -> Any:
    """The one tiled page of ``dims`` that can be decoded directly, else ValueError."""
    pages = [p for p in tif.pages if p.is_tiled and (int(p.imagewidth), int(p.imagelength)) == dims]
    if len(pages) != 1:
        raise ValueError(f"{len(pages)} tiled pages of {dims}")
    page = pages[0]
    if (int(page.samplesperpixel) != 3 or int(page.bitspersample) != 8 or int(page.planarconfig) != 1
            or int(page.photometric) not in _PHOTOMETRIC or getattr(page, "tiledepth", 1) != 1):
        raise ValueError("not 8-bit contiguous RGB tiles")
    return page
