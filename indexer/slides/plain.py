"""Plain images (PNG, JPEG, TIFFs OpenSlide refuses) as one-level slides, decoded whole within a pixel limit.

The rule: a plain image is decoded whole, so the pixel count its header claims must be at most
``limits.MAX_IMAGE_PIXELS`` (env ``SLIDESEARCH_MAX_IMAGE_PIXELS``); that is checked before any pixel
is decoded. A TIFF's strip/tile table must also lie inside the file, and truncated data is an error.
"""

from __future__ import annotations

import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image

from indexer.errors import SlideError
from indexer.slides.limits import limit, over_limit, pil_pixel_limit
from indexer.slides.tiff_layout import check_tiff_layout

WHITE = (255, 255, 255)


class PlainImage:
    """A single-level slide backed by one decoded RGB image."""

    vendor = "image"
    objective_power = None

    def __init__(self, path: Path, why_not_pyramid: str = ""):
        self.image = load_plain_image(path, why_not_pyramid)
        self.level_dimensions = (self.image.size,)
        self.level_downsamples = (1.0,)

    def metadata_mpp(self) -> tuple[float | None, str]:
        """(µm/px, source) from the image's dpi, unchecked; (None, "none") without one."""
        dpi = self.image.info.get("dpi")
        if dpi and float(dpi[0]) > 0:
            return 25400.0 / float(dpi[0]), "image-dpi"
        return None, "none"

    def read_region(self, x: int, y: int, level: int, w: int, h: int) -> Image.Image:
        """RGB crop of level 0 (``level`` is 0); parts outside the image are white."""
        return crop_padded(self.image, x, y, w, h)

    def thumbnail(self, max_px: int) -> Image.Image:
        """RGB thumbnail whose longer side is at most ``max_px``."""
        thumb = self.image.copy()
        thumb.thumbnail((max_px, max_px), Image.Resampling.BILINEAR)
        return thumb

    def close(self) -> None:
        """Drop the decoded pixels."""
        self.image = None


@contextmanager
def quiet_decoders() -> Iterator[None]:
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


def load_plain_image(path: Path, why_not_pyramid: str = "") -> Image.Image:
    """Decode a plain image (PIL, then tifffile) within the pixel limit.

    Raises:
        SlideError: over the pixel limit, truncated, not an image, or out of memory while decoding.
    """
    check_tiff_layout(path)
    cap = limit("MAX_IMAGE_PIXELS")
    try:
        with quiet_decoders(), pil_pixel_limit(cap):
            image = _decode_with_pil(path, why_not_pyramid)
            return image if image is not None else _decode_with_tifffile(path, why_not_pyramid)
    except MemoryError:
        raise SlideError(f"{path}: out of memory while decoding it as a plain image{why_not_pyramid}") from None


def _too_big(path: Path, width: int, height: int, why_not_pyramid: str) -> None:
    why = over_limit(width, height, "MAX_IMAGE_PIXELS")
    if why:
        raise SlideError(f"{path}: as a plain image (decoded whole{why_not_pyramid}), {why}; "
                         "convert it to a tiled pyramidal TIFF")


def _decode_with_pil(path: Path, why_not_pyramid: str) -> Image.Image | None:
    """The decoded RGB image, or None when PIL cannot read the file (tifffile may)."""
    try:
        img = Image.open(path)
    except Image.DecompressionBombError as exc:  # over PIL's own threshold, which is above ours
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed[1]):,} px" if claimed else "its size"
        raise SlideError(f"{path}: as a plain image (decoded whole{why_not_pyramid}), {size} is over the limit "
                         f"of {limit('MAX_IMAGE_PIXELS'):,} px; convert it to a tiled pyramidal TIFF") from None
    except Exception:  # noqa: BLE001 - not an image PIL knows
        return None
    with img:
        _too_big(path, *img.size, why_not_pyramid)
        try:
            img.load()
            info = dict(img.info)
            rgb = _to_rgb(img)
        except MemoryError:
            raise
        except Exception:  # noqa: BLE001 - PIL's decoder failed: try tifffile
            return None
    rgb.info.update(info)
    return rgb


def _decode_with_tifffile(path: Path, why_not_pyramid: str) -> Image.Image:
    try:
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            page = series.keyframe
            _too_big(path, int(page.imagewidth), int(page.imagelength), why_not_pyramid)
            if series.nbytes > 8 * limit("MAX_IMAGE_PIXELS"):
                raise SlideError(f"{path}: as a plain image its {series.shape} samples are over the pixel limit")
            array = series.asarray()
    except (SlideError, MemoryError):
        raise
    except Exception:  # noqa: BLE001
        raise SlideError(f"{path}: not a readable slide or image (unsupported format or truncated file)") from None
    return _array_to_rgb(np.asarray(array), path)


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        out = Image.new("RGB", rgba.size, WHITE)
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


def crop_padded(img: Image.Image, x: int, y: int, w: int, h: int) -> Image.Image:
    """Crop (x, y, w, h) from ``img``; parts outside the image are white."""
    iw, ih = img.size
    if x >= 0 and y >= 0 and x + w <= iw and y + h <= ih:
        return img.crop((x, y, x + w, y + h))
    out = Image.new("RGB", (w, h), WHITE)
    left, top, right, bottom = max(x, 0), max(y, 0), min(x + w, iw), min(y + h, ih)
    if right > left and bottom > top:
        out.paste(img.crop((left, top, right, bottom)), (left - x, top - y))
    return out
