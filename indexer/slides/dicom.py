"""DICOM-WSI slides: a folder of VL Whole Slide Microscopy instances (one per level) read with wsidicom."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from indexer.errors import SlideError
from indexer.slides.plain import WHITE

DICOM_SUFFIX = ".dcm"


def is_dicom_file(path: Path) -> bool:
    """A ``.dcm`` file, or a file without suffix that starts with the DICOM preamble (``DICM`` at byte 128)."""
    if path.suffix.lower() == DICOM_SUFFIX:
        return True
    if path.suffix or not path.is_file():
        return False
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def dicom_folder(path: Path) -> Path | None:
    """The folder ``path`` stands for as a DICOM slide: itself when it holds DICOM files (not in
    subfolders), the parent of a ``.dcm`` file; else None."""
    if path.is_dir():
        return path if any(is_dicom_file(child) for child in path.iterdir() if child.is_file()) else None
    return path.parent if path.is_file() and path.suffix.lower() == DICOM_SUFFIX else None


class WsiDicomSlide:
    """Levels (largest first), MPP from the DICOM pixel spacing, and RGB reads of an open ``WsiDicom``
    (a folder of files, or a DICOMweb series: ``indexer.slides.dicomweb``)."""

    vendor = "dicom"
    objective_power = None

    def __init__(self, wsi, label: object):
        try:
            levels = sorted(wsi.levels, key=lambda lvl: -lvl.size.width)
            if not levels:
                raise ValueError("it has no pyramid levels")
        except Exception as exc:  # noqa: BLE001 - wsidicom's errors for missing/foreign instances
            wsi.close()
            raise SlideError(f"{label}: not a readable DICOM-WSI pyramid ({one_line(exc)})") from None
        self.wsi, self.levels = wsi, levels
        w0, h0 = levels[0].size.width, levels[0].size.height
        self.level_dimensions = tuple((int(lvl.size.width), int(lvl.size.height)) for lvl in levels)
        self.level_downsamples = tuple((w0 / w + h0 / h) / 2.0 for w, h in self.level_dimensions)

    def metadata_mpp(self) -> tuple[float | None, str]:
        """(µm/px of level 0's column spacing, source), unchecked."""
        mpp = self.levels[0].mpp
        return (float(mpp.width) if mpp is not None else None), "dicom-pixel-spacing"

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> Image.Image:
        """RGB region (level-0 ``x, y``; ``w, h`` at ``level``); parts outside the level are white."""
        lw, lh = self.level_dimensions[level]
        downsample = self.level_downsamples[level]
        lx, ly = int(x // downsample), int(y // downsample)
        left, top, right, bottom = max(lx, 0), max(ly, 0), min(lx + w, lw), min(ly + h, lh)
        if left == lx and top == ly and right - left == w and bottom - top == h:
            return self._read(left, top, level, w, h)
        out = Image.new("RGB", (w, h), WHITE)
        if right > left and bottom > top:
            out.paste(self._read(left, top, level, right - left, bottom - top), (left - lx, top - ly))
        return out

    def _read(self, x: int, y: int, level: int, w: int, h: int) -> Image.Image:
        return self.wsi.read_region((x, y), self.levels[level].level, (w, h)).convert("RGB")

    def thumbnail(self, max_px: int) -> Image.Image:
        """RGB thumbnail from the smallest sufficient level (read in chunks when large)."""
        from indexer.slides.thumbnail import level_thumbnail

        return level_thumbnail(self, max_px)

    def close(self) -> None:
        """Close the instance files."""
        self.wsi.close()


class DicomSlide(WsiDicomSlide):
    """A DICOM-WSI folder (VL Whole Slide Microscopy instances, one per level), its pixel data checked to lie in its files."""

    def __init__(self, folder: Path):
        from indexer.slides.dicom_layout import check_dicom_layout

        wsi = _open_folder(folder)
        try:
            for file in wsi.files or ():
                check_dicom_layout(Path(str(file)))
        except BaseException:
            wsi.close()
            raise
        super().__init__(wsi, folder)


def _open_folder(folder: Path):
    try:
        from wsidicom import WsiDicom
    except ImportError as exc:  # a broken installation, not a property of the slide
        raise SlideError(f"{folder}: reading DICOM-WSI needs wsidicom (pip install wsidicom): {exc}") from None
    try:
        return WsiDicom.open(folder)
    except Exception as exc:  # noqa: BLE001 - wsidicom's errors for missing/foreign/corrupt instances
        raise SlideError(f"{folder}: not a readable DICOM-WSI folder ({one_line(exc)})") from None


def one_line(exc: BaseException) -> str:
    """``Type: first line`` of an exception (wsidicom's and requests' messages run over several lines)."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__
