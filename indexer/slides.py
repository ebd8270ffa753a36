"""Open whole-slide images (OpenSlide, with a plain-image fallback) and read their levels and MPP."""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np
from PIL import Image

from indexer.errors import SlideError

PLAUSIBLE_MPP = (0.05, 20.0)  # µm/px; values outside (e.g. 72-dpi defaults = 352 µm) are ignored
_WHITE = (255, 255, 255)
_LEVEL_TOLERANCE = 0.01  # relative slack when matching a downsample to a pyramid level


def open_slide(path: str | Path, mpp: float | None = None, require_mpp: bool = True) -> "Slide":
    """Open a slide file with OpenSlide, or as a single-level image when OpenSlide refuses it.

    Args:
        path: slide file (SVS, NDPI, MRXS, SCN, tiled TIFF …) or plain image (PNG, JPEG, TIFF).
        mpp: microns per pixel at level 0; when given it wins over the file's metadata.
        require_mpp: raise when no MPP is known (from metadata or ``mpp``).

    Returns:
        An open :class:`Slide` (a context manager).

    Raises:
        SlideError: missing path, directory, unreadable/truncated file, or no MPP when required.
    """
    return Slide(path, mpp=mpp, require_mpp=require_mpp)


class Slide:
    """One whole-slide image: pyramid geometry, MPP and region reads (RGB, white background).

    Pickles by path and parameters only; the unpickled copy reopens the file.
    """

    def __init__(self, path: str | Path, mpp: float | None = None, require_mpp: bool = True):
        self.path = Path(path)
        self._mpp_override = mpp
        self._require_mpp = require_mpp
        _check_path(self.path)
        if mpp is not None and not mpp > 0:
            raise SlideError(f"{self.path}: --mpp must be a positive number of microns per pixel, got {mpp}")
        self._osr: Any = None
        self._image: Image.Image | None = None
        self._open_backend()
        self.mpp, self.mpp_source = self._resolve_mpp()
        if self.mpp is None and require_mpp:
            raise SlideError(
                f"{self.path}: has no microns-per-pixel in its metadata; "
                "pass --mpp (e.g. --mpp 0.5 for 20x, --mpp 0.25 for 40x)"
            )

    # ---- opening -------------------------------------------------------------------------
    def _open_backend(self) -> None:
        import openslide

        try:
            self._osr = openslide.OpenSlide(str(self.path))
        except (openslide.OpenSlideUnsupportedFormatError, openslide.OpenSlideError):
            self._osr = None
        if self._osr is not None:
            props = self._osr.properties
            self.vendor = props.get(openslide.PROPERTY_NAME_VENDOR) or "generic-tiff"
            self.level_count = int(self._osr.level_count)
            self.level_dimensions = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
            self.level_downsamples = tuple(float(d) for d in self._osr.level_downsamples)
            power = props.get(openslide.PROPERTY_NAME_OBJECTIVE_POWER)
            self.objective_power = _to_float(power)
            return
        self._image = _load_plain_image(self.path)
        self.vendor = "image"
        self.level_count = 1
        self.level_dimensions = (self._image.size,)
        self.level_downsamples = (1.0,)
        self.objective_power = None

    def _ensure_open(self) -> None:
        if self._osr is None and self._image is None:
            self._open_backend()

    def _resolve_mpp(self) -> tuple[float | None, str]:
        if self._mpp_override is not None:
            return float(self._mpp_override), "override (--mpp)"
        if self._osr is not None:
            value = _plausible(_to_float(self._osr.properties.get("openslide.mpp-x")))
            if value is not None:
                return value, "openslide.mpp-x"
        value = _tiff_resolution_mpp(self.path)
        if value is not None:
            return value, "tiff-resolution"
        if self._image is not None:
            dpi = self._image.info.get("dpi")
            value = _plausible(25400.0 / float(dpi[0])) if dpi and float(dpi[0]) > 0 else None
            if value is not None:
                return value, "image-dpi"
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
        limit = downsample * (1.0 + _LEVEL_TOLERANCE)
        fitting = [i for i, d in enumerate(self.level_downsamples) if d <= limit]
        return max(fitting) if fitting else 0

    # ---- pixels ----------------------------------------------------------------------------
    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> Image.Image:
        """Read an RGB region; ``location`` is level-0 (x, y), ``size`` is (w, h) at ``level``.

        Transparent pixels are composited on white and areas past the slide edge are white.
        """
        if not 0 <= level < self.level_count:
            raise SlideError(f"{self.path}: level {level} does not exist (slide has {self.level_count})")
        x, y = int(location[0]), int(location[1])
        w, h = int(size[0]), int(size[1])
        self._ensure_open()
        if self._osr is not None:
            try:
                rgba = self._osr.read_region((x, y), level, (w, h))
            except Exception as exc:  # openslide raises its own errors for corrupt tiles
                raise SlideError(f"{self.path}: cannot read region at ({x}, {y}): {exc}") from exc
            out = Image.new("RGB", rgba.size, _WHITE)
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return _crop_padded(self._image, x, y, w, h)

    def thumbnail(self, max_px: int) -> Image.Image:
        """RGB thumbnail whose longer side is at most ``max_px`` (aspect ratio kept)."""
        self._ensure_open()
        if self._osr is not None:
            try:
                return self._osr.get_thumbnail((max_px, max_px)).convert("RGB")
            except Exception as exc:
                raise SlideError(f"{self.path}: cannot read a thumbnail: {exc}") from exc
        thumb = self._image.copy()
        thumb.thumbnail((max_px, max_px), Image.Resampling.BILINEAR)
        return thumb

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
        if self._osr is not None:
            self._osr.close()
            self._osr = None
        self._image = None

    def __enter__(self) -> "Slide":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (Slide, (self.path, self._mpp_override, self._require_mpp))

    def __repr__(self) -> str:
        return f"Slide({str(self.path)!r}, vendor={self.vendor!r}, dims={self.dimensions}, mpp={self.mpp})"


def _check_path(path: Path) -> None:
    if not path.exists():
        raise SlideError(f"{path}: no such file")
    if path.is_dir():
        raise SlideError(f"{path}: is a directory, not a slide file")


@contextmanager
def _quiet_decoders() -> Iterator[None]:
    """Silence PIL warnings and tifffile log lines: a bad file must give one error line, not a log."""
    logger = logging.getLogger("tifffile")
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(previous)


def _load_plain_image(path: Path) -> Image.Image:
    """Decode a plain image fully (PIL, then tifffile); truncated or non-image files raise SlideError."""
    with _quiet_decoders():
        return _decode_plain_image(path)


def _decode_plain_image(path: Path) -> Image.Image:
    Image.MAX_IMAGE_PIXELS = None  # slides are large by nature; not a decompression bomb
    try:
        with Image.open(path) as img:
            img.load()
            info = dict(img.info)
            rgb = _to_rgb(img)
        rgb.info.update(info)
        return rgb
    except Exception:  # noqa: BLE001 - any decoder failure means "try tifffile"
        try:
            import tifffile

            array = tifffile.imread(path)
        except Exception:  # noqa: BLE001
            raise SlideError(f"{path}: not a readable slide or image (unsupported format or truncated file)") from None
        return _array_to_rgb(np.asarray(array), path)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, _WHITE)
        out.paste(rgba, mask=rgba.getchannel("A"))
        return out
    if img.mode.startswith("I;16") or img.mode in ("I", "F"):
        return _array_to_rgb(np.asarray(img), Path(getattr(img, "filename", "") or "image"))
    return img.convert("RGB")


def _array_to_rgb(array: np.ndarray, path: Path) -> Image.Image:
    if array.ndim == 3 and array.shape[0] in (3, 4) and array.shape[-1] not in (3, 4):
        array = np.moveaxis(array, 0, -1)
    if array.ndim == 2:
        array = np.stack([array] * 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] < 3:
        raise SlideError(f"{path}: unsupported image layout {array.shape}")
    array = array[..., :3]
    if array.dtype != np.uint8:
        lo, hi = float(array.min()), float(array.max())
        array = ((array - lo) / (hi - lo or 1.0) * 255).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(array), "RGB")


def _crop_padded(img: Image.Image, x: int, y: int, w: int, h: int) -> Image.Image:
    """Crop (x, y, w, h) from ``img``; parts outside the image are white."""
    iw, ih = img.size
    if x >= 0 and y >= 0 and x + w <= iw and y + h <= ih:
        return img.crop((x, y, x + w, y + h))
    out = Image.new("RGB", (w, h), _WHITE)
    left, top, right, bottom = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
    if right > left and bottom > top:
        out.paste(img.crop((left, top, right, bottom)), (left - x, top - y))
    return out


def _tiff_resolution_mpp(path: Path) -> float | None:
    """µm/px from the first TIFF page's XResolution + ResolutionUnit (inch or cm), if plausible."""
    try:
        import tifffile

        with _quiet_decoders(), tifffile.TiffFile(path) as tif:
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
