"""Builders of hostile slide and image files for the tests: bombs, lying headers, truncations, bad tiles."""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_SHORT, _LONG, _RATIONAL = 3, 4, 5


@dataclass
class TiffPage:
    """One IFD of a hand-written classic TIFF (RGB, 8 bits per sample).

    ``blobs`` are written once each; ``segments`` gives, per strip or tile, the blob it points at
    (several segments may share one blob), and ``claimed`` optionally overrides the byte counts.
    """

    width: int
    height: int
    blobs: list[bytes]
    segments: list[int]
    compression: int = 8  # 1 none, 7 JPEG, 8 deflate
    tile: int | None = None
    rows_per_strip: int | None = None
    subfiletype: int = 0
    photometric: int = 2
    mpp: float = 0.5
    claimed: list[int] | None = field(default=None)


def write_tiff(path: str | Path, pages: list[TiffPage]) -> Path:
    """Write ``pages`` as a little-endian classic TIFF: header, then per page its blobs and its IFD."""
    out = bytearray(b"II*\x00\x00\x00\x00\x00")
    link = 4  # where the offset of the next IFD goes
    for page in pages:
        offsets = []
        for blob in page.blobs:
            offsets.append(len(out))
            out += blob
            if len(out) % 2:
                out += b"\x00"
        seg_offsets = [offsets[i] for i in page.segments]
        seg_counts = page.claimed or [len(page.blobs[i]) for i in page.segments]
        px_per_cm = 1e4 / page.mpp
        tags: list[tuple[int, int, list[int]]] = [
            (254, _LONG, [page.subfiletype]),
            (256, _LONG, [page.width]),
            (257, _LONG, [page.height]),
            (258, _SHORT, [8, 8, 8]),
            (259, _SHORT, [page.compression]),
            (262, _SHORT, [page.photometric]),
            (277, _SHORT, [3]),
            (282, _RATIONAL, [round(px_per_cm * 1000), 1000]),
            (283, _RATIONAL, [round(px_per_cm * 1000), 1000]),
            (284, _SHORT, [1]),
            (296, _SHORT, [3]),
        ]
        if page.tile:
            tags += [(322, _LONG, [page.tile]), (323, _LONG, [page.tile]),
                     (324, _LONG, seg_offsets), (325, _LONG, seg_counts)]
        else:
            tags += [(273, _LONG, seg_offsets), (278, _LONG, [page.rows_per_strip or page.height]),
                     (279, _LONG, seg_counts)]
        tags.sort()
        ifd_at = len(out) + len(out) % 2
        out += b"\x00" * (ifd_at - len(out))
        struct.pack_into("<I", out, link, ifd_at)
        ifd_size = 2 + 12 * len(tags) + 4
        extra = bytearray()
        entries = bytearray(struct.pack("<H", len(tags)))
        for code, kind, values in tags:
            fmt = {_SHORT: "H", _LONG: "I", _RATIONAL: "I"}[kind]
            count = len(values) // 2 if kind == _RATIONAL else len(values)
            data = struct.pack(f"<{len(values)}{fmt}", *values)
            if len(data) <= 4:
                entries += struct.pack("<HHI", code, kind, count) + data.ljust(4, b"\x00")
            else:
                entries += struct.pack("<HHII", code, kind, count, ifd_at + ifd_size + len(extra))
                extra += data
        link = ifd_at + len(entries)
        out += entries + b"\x00\x00\x00\x00" + extra
    Path(path).write_bytes(bytes(out))
    return Path(path)


def claiming_tiff(path: str | Path, width: int = 2**16, height: int = 2**15) -> Path:
    """An uncompressed stripped TIFF whose header claims ``width`` × ``height`` px but holds 4 KB."""
    page = TiffPage(width, height, [b"\xee" * 4096], [0], compression=1, claimed=[min(width * height * 3, 2**32 - 1)])
    return write_tiff(path, [page])


def tiled_claiming_tiff(path: str | Path, side: int = 2**16) -> Path:
    """A tiled deflate TIFF of ``side``² px whose tile byte counts run past the end of the (small) file."""
    tiles = (side // 256) ** 2
    blob = zlib.compress(b"\xee" * (256 * 256 * 3), 9)
    page = TiffPage(side, side, [blob], [0] * tiles, tile=256, claimed=[1 << 22] * tiles)
    return write_tiff(path, [page])


def stripped_huge_tiff(path: str | Path, side: int = 50_000) -> Path:
    """A two-level TIFF: a stripped deflate level 0 of ``side``² px (every strip shares one tiny blob,
    so the header agrees with the file size) and a small tiled level 1."""
    rows = 64
    blob = zlib.compress(b"\xf0" * (side * 3 * rows), 9)
    level0 = TiffPage(side, side, [blob], [0] * (-(-side // rows)), rows_per_strip=rows)
    small = zlib.compress(b"\xd0" * (256 * 256 * 3), 9)
    level1 = TiffPage(512, 512, [small], [0, 0, 0, 0], tile=256, subfiletype=1, mpp=0.5 * side / 512)
    return write_tiff(path, [level0, level1])


def png_bomb(path: str | Path, side: int = 40_000) -> Path:
    """A valid 1-bit grayscale PNG of ``side``² px (a decompression bomb of ~200 KB)."""
    row = b"\x00" + b"\x00" * (-(-side // 8))
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", side, side, 1, 0, 0, 0, 0)
    Path(path).write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return Path(path)


def jpeg_tiled_tiff(path: str | Path, side: int = 1024, corrupt: bool = True, mpp: float = 0.5) -> Path:
    """A single-level tiled TIFF of JPEG tiles (encoded with PIL) whose tiles are garbled when ``corrupt``."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    blobs = []
    for _ in range((side // 256) ** 2):
        pixels = np.full((256, 256, 3), (200, 120, 170), np.uint8) + rng.integers(0, 30, (256, 256, 3), np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=80)
        blob = bytearray(buffer.getvalue())
        if corrupt:
            blob[2:] = bytes(rng.integers(0, 256, len(blob) - 2, np.uint8))  # SOI, then noise
        blobs.append(bytes(blob))
    page = TiffPage(side, side, blobs, list(range(len(blobs))), compression=7, tile=256, photometric=6, mpp=mpp)
    return write_tiff(path, [page])


def truncations(data: bytes, n: int = 10) -> list[int]:
    """``n`` cut points spread over ``data`` (from just past the header to just before the end)."""
    return sorted({int(x) for x in np.linspace(16, len(data) - 1, n)})
