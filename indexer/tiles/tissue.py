"""Tissue detection on a low-resolution view: HSV saturation + Otsu, pen-mark removal, morphology."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import numpy as np

from indexer.slides import Slide


@dataclass(frozen=True)
class TissueConfig:
    """Tissue-detection settings.

    Attributes:
        max_px: longer side of the low-resolution image the mask is computed on.
        min_saturation: floor of the saturation threshold (a blank slide stays empty).
        max_saturation_threshold: cap on the Otsu threshold (a slide full of tissue is not split in two).
        smooth_sigma: Gaussian smoothing (mask px) of the saturation before thresholding.
        min_object_fraction: tissue components smaller than this fraction of the image are dropped.
        min_hole_fraction: holes smaller than this fraction of the image are filled.
        closing_radius: radius (mask px) of the morphological closing.
        remove_pen: drop strongly saturated blue/green ink and near-black marks.
    """

    max_px: int = 1024
    min_saturation: float = 0.05
    max_saturation_threshold: float = 0.12
    smooth_sigma: float = 1.0
    min_object_fraction: float = 2e-4
    min_hole_fraction: float = 1e-3
    closing_radius: int = 2
    remove_pen: bool = True


@dataclass(frozen=True, eq=False)
class TissueMask:
    """Boolean tissue mask (h, w) of a low-resolution view; ``downsample`` = level-0 px per mask px."""

    mask: np.ndarray
    downsample: float

    @cached_property
    def _integral(self) -> np.ndarray:
        dtype = np.int32 if self.mask.size < 2**31 else np.int64  # exact either way; int32 sums twice as fast
        integral = np.zeros((self.mask.shape[0] + 1, self.mask.shape[1] + 1), dtype)
        np.cumsum(self.mask, axis=0, dtype=dtype, out=integral[1:, 1:])
        np.cumsum(integral[1:, 1:], axis=1, out=integral[1:, 1:])
        return integral

    @property
    def tissue_fraction(self) -> float:
        """Fraction of the whole slide covered by tissue."""
        return float(self.mask.mean()) if self.mask.size else 0.0

    def fraction(self, x: int | np.ndarray, y: int | np.ndarray, size: int) -> float | np.ndarray:
        """Tissue fraction of level-0 square(s) with top-left (x, y) and side ``size``.

        Vectorised: ``x`` and ``y`` may be arrays (one square each). Parts outside the slide count as
        background.

        >>> m = TissueMask(np.array([[1, 1, 0, 0]] * 4, bool), downsample=2.0)
        >>> m.fraction(0, 0, 4), m.fraction(4, 0, 4)
        (1.0, 0.0)
        >>> m.fraction(np.array([0, 2]), np.array([0, 0]), 4).tolist()
        [1.0, 0.5]
        """
        h, w = self.mask.shape
        xs, ys = np.asarray(x, np.float64), np.asarray(y, np.float64)
        x0 = np.round(xs / self.downsample).astype(np.int64)
        y0 = np.round(ys / self.downsample).astype(np.int64)
        side = max(1, int(round(size / self.downsample)))
        x1, y1 = x0 + side, y0 + side
        cx0, cx1 = np.clip(x0, 0, w), np.clip(x1, 0, w)
        cy0, cy1 = np.clip(y0, 0, h), np.clip(y1, 0, h)
        s = self._integral
        inside = s[cy1, cx1] - s[cy0, cx1] - s[cy1, cx0] + s[cy0, cx0]
        result = inside / float(side * side)
        return float(result) if result.ndim == 0 else result


def saturation_value(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value (float32 in [0, 1]) of a uint8 RGB image."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    mx = np.maximum(np.maximum(r, g), b).astype(np.float32)
    mn = np.minimum(np.minimum(r, g), b).astype(np.float32)
    sat = np.divide(mx - mn, mx, out=np.zeros_like(mx), where=mx > 0)
    return sat, mx / 255.0


def pen_mask(rgb: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Pixels of obvious pen ink: saturated blue, green, or near-black.

    Blue ink has hue 0.5–0.67 (blue channel largest, green ≥ red), unlike haematoxylin's purple
    (red > green); green ink has green as the largest channel, which stained tissue never has.
    """
    r, g, b = (rgb[..., i].astype(np.int16) for i in range(3))
    blue = (b >= g) & (g >= r) & (sat > 0.5) & (val > 0.3)
    green = (g > r) & (g > b) & (sat > 0.3) & (val > 0.15)
    return blue | green | (val < 0.18)


def detect_tissue(slide: Slide, config: TissueConfig = TissueConfig()) -> TissueMask:
    """Tissue mask of a slide, computed on a thumbnail of at most ``config.max_px`` px.

    Args:
        slide: an open slide.
        config: thresholds and clean-up sizes.

    Returns:
        A :class:`TissueMask` whose ``downsample`` maps mask px to level-0 px.
    """
    from scipy.ndimage import gaussian_filter
    from skimage import filters, morphology

    thumb = np.asarray(slide.thumbnail(config.max_px).convert("RGB"))
    downsample = slide.dimensions[0] / thumb.shape[1]
    raw_sat, val = saturation_value(thumb)
    sat = gaussian_filter(raw_sat, config.smooth_sigma) if config.smooth_sigma > 0 else raw_sat
    low, high = float(sat.min()), float(sat.max())
    if high < config.min_saturation:
        return TissueMask(np.zeros(sat.shape, bool), downsample)
    threshold = filters.threshold_otsu(sat) if high - low > 1e-6 else config.min_saturation
    threshold = float(np.clip(threshold, config.min_saturation, config.max_saturation_threshold))
    tissue = sat > threshold
    if config.remove_pen:
        pen = pen_mask(thumb, raw_sat, val)
        if pen.any():  # most slides have no ink: nothing to dilate
            tissue &= ~binary_dilation(pen, 2)
    area = tissue.size
    if config.closing_radius > 0:
        tissue = binary_erosion(binary_dilation(tissue, config.closing_radius), config.closing_radius)
    tissue = morphology.remove_small_holes(tissue, max_size=max(1, int(config.min_hole_fraction * area)))
    tissue = morphology.remove_small_objects(tissue, max_size=max(1, int(config.min_object_fraction * area)))
    return TissueMask(tissue.astype(bool), downsample)


def _disk_offsets(radius: int) -> list[tuple[int, int]]:
    """(dy, dx) of ``skimage.morphology.disk(radius)``."""
    from skimage.morphology import disk

    return [(int(dy) - radius, int(dx) - radius) for dy, dx in zip(*np.nonzero(disk(radius)))]


def binary_dilation(mask: np.ndarray, radius: int) -> np.ndarray:
    """``skimage.morphology.dilation(mask, disk(radius))`` of a boolean mask, as ORs of shifted copies.

    skimage reflects the border; for a disk, a reflected pixel is always already under the footprint, so
    that is the same as leaving the outside out (padding with False), which is what is done here.

    >>> binary_dilation(np.eye(3, dtype=bool)[::-1], 1).astype(int).tolist()
    [[0, 1, 1], [1, 1, 1], [1, 1, 0]]
    """
    return _shifted(mask, radius, False)


def binary_erosion(mask: np.ndarray, radius: int) -> np.ndarray:
    """``skimage.morphology.erosion(mask, disk(radius))`` of a boolean mask (the outside left out: True padding)."""
    return _shifted(mask, radius, True)


def _shifted(mask: np.ndarray, radius: int, erode: bool) -> np.ndarray:
    h, w = mask.shape
    padded = np.full((h + 2 * radius, w + 2 * radius), erode, bool)
    padded[radius:radius + h, radius:radius + w] = mask
    out = np.full((h, w), erode, bool)
    for dy, dx in _disk_offsets(radius):
        window = padded[radius + dy:radius + dy + h, radius + dx:radius + dx + w]
        if erode:
            out &= window
        else:
            out |= window
    return out
