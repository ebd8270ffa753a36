"""Check that a DICOM instance's pixel data (native or encapsulated frames) lies inside its file."""

from __future__ import annotations

import struct
from pathlib import Path

from indexer.errors import SlideError

_PIXEL_DATA = b"\xe0\x7f\x10\x00"  # (7FE0,0010), little endian
_ITEM, _SEQUENCE_END = b"\xfe\xff\x00\xe0", b"\xfe\xff\xdd\xe0"  # (FFFE,E000), (FFFE,E0DD)
_UNDEFINED = 0xFFFFFFFF


def check_dicom_layout(path: str | Path) -> None:
    """Raise SlideError when ``path``'s pixel data runs past the end of the file (truncated or corrupt).

    Encapsulated pixel data is walked item by item (one 8-byte read per fragment) and must hold at
    least one fragment per frame before its delimiter. Big-endian files and files whose pixel data
    does not follow the header directly are not checked.
    """
    import pydicom

    path = Path(path)
    size = path.stat().st_size
    with open(path, "rb") as fh:
        try:
            dataset = pydicom.dcmread(fh, stop_before_pixels=True)
        except Exception as exc:  # noqa: BLE001 - pydicom's errors for broken headers
            _fail(path, f"unreadable header ({type(exc).__name__})")
        syntax = dataset.file_meta.get("TransferSyntaxUID")
        if syntax is None or not syntax.is_little_endian:
            return
        start = fh.tell()
        header = fh.read(8 if syntax.is_implicit_VR else 12)
        if len(header) < 8:
            _fail(path, "no pixel data after the header")
        if header[:4] != _PIXEL_DATA:
            return
        length = struct.unpack("<I", header[-4:])[0]
        frames = int(dataset.get("NumberOfFrames", 1) or 1)
        if length != _UNDEFINED:
            if start + len(header) + length > size:
                _fail(path, f"its {length:,} bytes of pixel data run past the end of the {size:,}-byte file")
            return
        fragments = _count_fragments(fh, path, start + len(header), size) - 1  # the first item is the offset table
    if fragments < frames:
        _fail(path, f"it holds {fragments} fragments for {frames} frames")


def _count_fragments(fh, path: Path, position: int, size: int) -> int:
    items = 0
    while True:
        fh.seek(position)
        item = fh.read(8)
        if len(item) < 8:
            _fail(path, f"its pixel data stops after {max(items - 1, 0)} frames at the end of the {size:,}-byte file")
        tag, length = item[:4], struct.unpack("<I", item[4:])[0]
        if tag == _SEQUENCE_END:
            return items
        if tag != _ITEM or length == _UNDEFINED:
            _fail(path, f"item {items} of its pixel data is corrupt")
        position += 8 + length
        items += 1
        if position > size:
            _fail(path, f"frame {items - 1} runs past the end of the {size:,}-byte file")


def _fail(path: Path, why: str) -> None:
    raise SlideError(f"{path}: truncated or corrupt DICOM: {why}")
