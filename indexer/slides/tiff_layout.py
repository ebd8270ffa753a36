"""Check that a TIFF's directory chain and strip/tile tables lie inside the file (truncation, lying headers)."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from indexer.errors import SlideError

_ITEM = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4, 16: 8, 17: 8, 18: 8}
_UINT = {2: "u2", 4: "u4", 8: "u8"}
_OFFSETS, _COUNTS = (273, 324), (279, 325)  # StripOffsets/TileOffsets, StripByteCounts/TileByteCounts
MAX_PAGES = 4096


def check_tiff_layout(path: str | Path) -> None:
    """Raise SlideError when a TIFF (classic or BigTIFF) is truncated or its header points past its end.

    Every directory of the main chain must lie inside the file, and so must every strip or tile
    with a non-zero byte count. Files that are not TIFF, and NDPI (whose 32-bit offsets wrap past
    4 GB), are not checked.
    """
    path = Path(path)
    if path.suffix.lower() == ".ndpi":
        return
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:4] in (b"II*\x00", b"MM\x00*"):
            big = False
        elif head[:4] in (b"II+\x00", b"MM\x00+"):
            big = True
        else:
            return
        order = "<" if head[:2] == b"II" else ">"
        if len(head) < (16 if big else 8):
            _fail(path, f"its {size}-byte header is cut short")
        offset = struct.unpack(order + ("Q" if big else "I"), head[8:16] if big else head[4:8])[0]
        seen: set[int] = set()
        for page in range(MAX_PAGES):
            if offset == 0:
                return
            if offset in seen:
                _fail(path, f"directory {page} loops back to byte {offset}")
            seen.add(offset)
            offset = _check_directory(fh, path, order, big, offset, size, page)


def _check_directory(fh, path: Path, order: str, big: bool, offset: int, size: int, page: int) -> int:
    """Check one directory; return the offset of the next one."""
    count_fmt, entry_size, next_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    count_size = struct.calcsize(count_fmt)
    if offset + count_size > size:
        _fail(path, f"directory {page} starts at byte {offset:,}, past the end of the {size:,}-byte file")
    fh.seek(offset)
    (n,) = struct.unpack(order + count_fmt, fh.read(count_size))
    end = offset + count_size + n * entry_size + struct.calcsize(next_fmt)
    if end > size:
        _fail(path, f"directory {page} ({n} entries) ends at byte {end:,}, past the end of the {size:,}-byte file")
    raw = fh.read(n * entry_size + struct.calcsize(next_fmt))
    arrays: dict[int, np.ndarray] = {}
    for i in range(n):
        entry = raw[i * entry_size:(i + 1) * entry_size]
        tag, kind = struct.unpack(order + "HH", entry[:4])
        if tag in _OFFSETS + _COUNTS:
            arrays[tag] = _read_values(fh, path, order, big, entry, kind, size, page)
    (next_offset,) = struct.unpack(order + next_fmt, raw[n * entry_size:])
    for offsets_tag, counts_tag in zip(_OFFSETS, _COUNTS):
        if offsets_tag in arrays and counts_tag in arrays:
            _check_segments(path, arrays[offsets_tag], arrays[counts_tag], size, page)
    return int(next_offset)


def _read_values(fh, path, order, big, entry, kind, size, page) -> np.ndarray:
    item = _ITEM.get(kind)
    if item not in _UINT:
        _fail(path, f"directory {page} has a strip/tile table of unknown type {kind}")
    count = struct.unpack(order + ("Q" if big else "I"), entry[4:12] if big else entry[4:8])[0]
    inline = 8 if big else 4
    payload = entry[12:20] if big else entry[8:12]
    nbytes = count * item
    if nbytes <= inline:
        data = payload[:nbytes]
    else:
        (at,) = struct.unpack(order + ("Q" if big else "I"), payload)
        if at + nbytes > size:
            _fail(path, f"directory {page} lists {count:,} strips/tiles whose table ends at byte {at + nbytes:,}, "
                        f"past the end of the {size:,}-byte file")
        fh.seek(at)
        data = fh.read(nbytes)
    return np.frombuffer(data, np.dtype(order + _UINT[item])).astype(np.uint64)


def _check_segments(path: Path, offsets: np.ndarray, counts: np.ndarray, size: int, page: int) -> None:
    if len(offsets) != len(counts):
        _fail(path, f"directory {page} has {len(offsets)} strip/tile offsets but {len(counts)} byte counts")
    used = counts > 0
    if not used.any():
        return
    ends = offsets[used] + counts[used]
    last = int(ends.max())
    if last > size:
        _fail(path, f"image data of directory {page} ends at byte {last:,}, past the end of the {size:,}-byte file")


def _fail(path: Path, why: str) -> None:
    raise SlideError(f"{path}: truncated or corrupt TIFF: {why}")
