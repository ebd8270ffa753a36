"""Open whole-slide images (OpenSlide, DICOM-WSI folders and DICOMweb series, plain-image fallback) and read their
levels and MPP.

Hostile input fails as one :class:`~indexer.errors.SlideError` line: a level 0 over
``limits.MAX_SLIDE_PIXELS`` / ``MAX_SLIDE_SIDE``, a plain image over ``limits.MAX_IMAGE_PIXELS``
(it is decoded whole), a TIFF whose header points past the end of the file, and running out of
memory while decoding. Limits can be raised with the ``SLIDESEARCH_MAX_*`` variables (``limits.ENV``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from indexer.errors import SlideError
from indexer.slides.limits import MAX_SLIDE_SIDE, over_limit

PLAUSIBLE_MPP = (0.05, 20.0)  # µm/px; values outside (e.g. 72-dpi defaults = 352 µm) are ignored
_LEVEL_TOLERANCE = 0.01  # relative slack when matching a downsample to a pyramid level


def open_slide(path: str | Path, mpp: float | None = None, require_mpp: bool = True) -> "Slide":
    """Open a slide: a DICOM-WSI folder (or one of its ``.dcm`` files) or DICOMweb series with wsidicom, a file
    with OpenSlide, or as a single-level image when OpenSlide refuses it.

    Args:
        path: slide file (SVS, NDPI, MRXS, SCN, tiled TIFF …), DICOM-WSI folder, plain image, or a
            ``dicomweb+http(s)://…/studies/UID/series/UID`` URL (a str: ``indexer.slides.dicomweb``).
        mpp: microns per pixel at level 0; when given it wins over the file's metadata.
        require_mpp: raise when no MPP is known (from metadata or ``mpp``).

    Returns:
        An open :class:`Slide` (a context manager).

    Raises:
        SlideError: missing path, unreadable/truncated file, header over the size limits or
            disagreeing with the file size, or no MPP when required.
    """
    return Slide(path, mpp=mpp, require_mpp=require_mpp)


def slide_id(path: str | Path) -> str:
    """The slide id of a slide input: a folder's name (DICOM-WSI), else the file name without its slide suffix."""
    from indexer.slides.ids import slide_id_from_name

    path = Path(path)
    return path.name if path.is_dir() else slide_id_from_name(path.name)


class Slide:
    """One whole-slide image: pyramid geometry, MPP and region reads (RGB, white background).

    Pickles by path and parameters only; the unpickled copy reopens the file.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, require_mpp: bool = True):
        from indexer.slides.dicomweb import is_dicomweb

        self.path: str | Path = str(path) if is_dicomweb(path) else Path(path)  # a URL is no file path
        self._mpp_override = mpp
        self._require_mpp = require_mpp
        if isinstance(self.path, Path) and not self.path.exists():
            raise SlideError(f"{self.path}: no such file")
        if isinstance(self.path, Path) and self.path.is_file() and self.path.stat().st_size == 0:
            raise SlideError(f"{self.path}: is an empty file, not a slide")
        if mpp is not None and not mpp > 0:
            raise SlideError(f"{self.path}: --mpp must be a positive number of microns per pixel, got {mpp}")
        self._backend: Any = None
        self._open_backend()
        self.mpp, self.mpp_source = self._resolve_mpp()
        if self.mpp is None and require_mpp:
            raise SlideError(
                f"{self.path}: has no microns-per-pixel in its metadata; "
                "pass --mpp (e.g. --mpp 0.5 for 20x, --mpp 0.25 for 40x)"
            )

    # ---- opening -------------------------------------------------------------------------
    def _open_backend(self) -> None:
        try:
            self._backend = _open_backend(self.path)
        except MemoryError:
            raise SlideError(f"{self.path}: out of memory while opening it (its header asks for too much)") from None
        backend = self._backend
        self.vendor = backend.vendor
        self.level_count = len(backend.level_dimensions)
        self.level_dimensions = backend.level_dimensions
        self.level_downsamples = backend.level_downsamples
        self.objective_power = _to_float(backend.objective_power)

    @property
    def reads_concurrently(self) -> bool:
        """Whether threads may read this slide at once (OpenSlide); plain images and wsidicom read one at a time."""
        from indexer.slides.openslide_backend import OpenSlideBackend

        self._ensure_open()
        return isinstance(self._backend, OpenSlideBackend)

    def _ensure_open(self) -> None:
        if self._backend is None:
            self._open_backend()

    def _resolve_mpp(self) -> tuple[float | None, str]:
        from indexer.slides.plain import PlainImage

        if self._mpp_override is not None:
            return float(self._mpp_override), "override (--mpp)"
        own, source = self._backend.metadata_mpp()
        plain = isinstance(self._backend, PlainImage)
        if not plain and _plausible(_to_float(own)) is not None:
            return _plausible(_to_float(own)), source
        value = _tiff_resolution_mpp(self.path) if isinstance(self.path, Path) and self.path.is_file() else None
        if value is not None:
            return value, "tiff-resolution"
        if plain and _plausible(_to_float(own)) is not None:
            return _plausible(_to_float(own)), source
        return None, "none"

    # ---- geometry --------------------------------------------------------------------------
    @property
    def dimensions(self) -> tuple[int, int]:
        """Level-0 (width, height) in pixels."""
        return self.level_dimensions[0]

    @property
    def magnification(self) -> float | None:
        """Objective power when the file records it, else ``10 / mpp`` (an ``--mpp`` override wins)."""
        if self.objective_power and self._mpp_override is None:
            return self.objective_power
        return 10.0 / self.mpp if self.mpp else None

    def best_level_for_downsample(self, downsample: float) -> int:
        """Highest pyramid level whose downsample is ≤ ``downsample`` (1 % tolerance)."""
        limit_ = downsample * (1.0 + _LEVEL_TOLERANCE)
        fitting = [i for i, d in enumerate(self.level_downsamples) if d <= limit_]
        return max(fitting) if fitting else 0

    # ---- pixels ----------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """Read an RGB region; ``location`` is level-0 (x, y), ``size`` is (w, h) at ``level``.

        Transparent pixels are composited on white and areas past the slide edge are white.
        """
        return self._guarded_read(lambda *args: self._backend.read_region(*args), location, level, size)

    def read_array(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """:meth:`read_region` as a (h, w, 3) uint8 array, without a PIL image in between where the backend can."""
        self._ensure_open()
        if not hasattr(self._backend, "read_array"):
            return np.asarray(self.read_region(location, level, size))
        return self._guarded_read(lambda *args: self._backend.read_array(*args), location, level, size)

    def _guarded_read(self, read, location: tuple[int, int], level: int, size: tuple[int, int]):
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} does not exist (slide has {self.level_count})")
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        self._ensure_open()
        try:
            return read(x, y, level, w, h)
        except SlideError:
            raise
        except MemoryError:
            raise SlideError(f"{self.path}: out of memory reading a {w}x{h} region at level {level}") from None
        except Exception as exc:  # noqa: BLE001 - decoders raise their own errors for corrupt tiles
            raise SlideError(f"{self.path}: cannot read region at ({x}, {y}): {_one_line(exc)}") from None

    def thumbnail(self, max_px: int) -> Image.Image:
        """RGB thumbnail whose longer side is at most ``max_px`` (aspect ratio kept; bounded memory)."""
        self._ensure_open()
        try:
            return self._backend.thumbnail(max_px)
        except SlideError:
            raise
        except MemoryError:
            raise SlideError(f"{self.path}: out of memory reading a thumbnail") from None
        except Exception as exc:  # noqa: BLE001
            raise SlideError(f"{self.path}: cannot read a thumbnail: {_one_line(exc)}") from None

    def facts(self) -> dict[str, Any]:
        """JSON-able summary: path, vendor, levels, dimensions, downsamples, MPP and magnification."""
        return {
            "path": str(self.path),
            "vendor": self.vendor,
            "levels": self.level_count,
            "dimensions": [list(d) for d in self.level_dimensions],
            "downsamples": [round(d, 4) for d in self.level_downsamples],
            "mpp": self.mpp,
            "mpp_source": self.mpp_source,
            "objective_power": self.objective_power,
            "magnification": self.magnification,
        }

    # ---- lifecycle -------------------------------------------------------------------------
    def close(self) -> None:
        """Release the file handle (further reads reopen it)."""
        if self._backend is not None:
            self._backend.close()
            self._backend = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Slide, (self.path, self._mpp_override, self._require_mpp))

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, vendor={self.vendor!r}, dims={self.dimensions}, mpp={self.mpp})"


def _open_backend(path: str | Path) -> Any:
    """DICOMweb URL or DICOM folder → wsidicom; file → OpenSlide (level 0 and TIFF layout checked) or the plain image."""
    from indexer.slides.dicom import DicomSlide, dicom_folder
    from indexer.slides.openslide_backend import try_openslide
    from indexer.slides.plain import PlainImage
    from indexer.slides.tiff_layout import check_tiff_layout

    if isinstance(path, str):
        from indexer.slides.dicomweb import DicomWebSlide

        backend = DicomWebSlide(path)
        _check_level0(path, backend)
        return backend
    folder = dicom_folder(path)
    if folder is not None:
        backend = DicomSlide(folder)
        _check_level0(path, backend)
        return backend
    if path.is_dir():
        raise SlideError(f"{path}: is a directory without DICOM files, not a slide")
    backend = try_openslide(path)
    if backend is None:
        return PlainImage(path, ", since OpenSlide cannot read it")
    try:
        _check_level0(path, backend)
        check_tiff_layout(path)
    except BaseException:
        backend.close()
        raise
    return backend


def _check_level0(path: str | Path, backend: Any) -> None:
    width, height = backend.level_dimensions[0]
    why = over_limit(width, height, "MAX_SLIDE_PIXELS")
    if why is None and max(width, height) > MAX_SLIDE_SIDE:
        why = f"{width}x{height} px is over the limit of {MAX_SLIDE_SIDE:,} px a side"
    if why is None and min(width, height) <= 0:
        why = f"{width}x{height} px is empty"
    if why:
        raise SlideError(f"{path}: level 0 of {why}")


def _tiff_resolution_mpp(path: Path) -> float | None:
    """µm/px from the first TIFF page's XResolution + ResolutionUnit (inch or cm), if plausible."""
    from indexer.slides.plain import quiet_decoders

    try:
        import tifffile

        with quiet_decoders(), tifffile.TiffFile(path) as tif:
            tags = tif.pages[0].tags
            xres, unit = tags.get("XResolution"), tags.get("ResolutionUnit")
            if xres is None or unit is None:
                return None
            num, den = xres.value
            unit_value = int(unit.value)
    except Exception:  # noqa: BLE001 - not a TIFF or unreadable tags: no MPP from here
        return None
    if not num or not den:
        return None
    per_unit = num / den
    microns = {2: 25400.0, 3: 10000.0}.get(unit_value)
    return _plausible(microns / per_unit) if microns else None


def _plausible(mpp: float | None) -> float | None:
    return mpp if mpp is not None and PLAUSIBLE_MPP[0] <= mpp <= PLAUSIBLE_MPP[1] else None


def _to_float(value: Any) -> float | None:
    try:
        result = float(value)
    except (TypeError, ValueError):
        return None
    return result if np.isfinite(result) and result > 0 else None


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


__all__ = ["PLAUSIBLE_MPP", "Slide", "SlideError", "open_slide", "slide_id"]
