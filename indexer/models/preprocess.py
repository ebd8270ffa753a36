"""Batched preprocessing: uint8 patches (N, H, W, 3) → the model's input tensor, on the encoder's device.

Readers send raw uint8 patches (a quarter of float32's bytes); the model's own torchvision transform
(``Resize`` → ``CenterCrop`` → RGB → ``ToTensor`` → ``Normalize``, as open_clip and CONCH build it) is
replayed on a whole batch at once, and gives the per-patch transform's input bit for bit:

- no resize (the patch already has the model's input size): the same float ops in the same order;
- a resize on a GPU: Pillow's own two-pass fixed-point resampling, written as two float64 matrix products
  (exact on these integers) on the device;
- a resize on the CPU: Pillow itself, in the reader processes (:attr:`BatchPreprocess.reader_resize`), which
  then send the model-sized patch. (torch's uint8 resize is 8x faster but uses Pillow-SIMD's 16-bit weights:
  0.5 % of values one level off, ~1e-4 on tiny's embeddings; exactness was kept instead.)

A transform of any other shape (a Hugging Face image processor, an unknown step) is applied per patch to
PIL images, exactly as before.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

if TYPE_CHECKING:
    import torch

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images (libImaging/Resample.c)
_NO_OPS = ("MaybeConvertMode", "_convert_to_rgb")  # RGB conversions: nothing to do on RGB patches
_MODES = ("bilinear", "bicubic")


@dataclass(frozen=True)
class BatchPlan:
    """What a recognised transform does: resize to ``size`` (None: keep), centre-crop to ``crop``, normalise."""

    size: tuple[int, int] | None
    mode: str
    crop: tuple[int, int] | None
    mean: tuple[float, ...]
    std: tuple[float, ...]


def plan_transform(transform: Any, patch_px: int) -> BatchPlan | None:
    """The batch plan of a torchvision ``Compose`` for square ``patch_px`` patches, or None when it has a step
    this module does not replay exactly."""
    from torchvision import transforms as T

    steps = getattr(transform, "transforms", None)
    if steps is None:
        return None
    size, mode, crop, norm, tensor = None, "bicubic", None, None, False
    side = (patch_px, patch_px)
    for step in steps:
        name = getattr(step, "__name__", type(step).__name__)
        if isinstance(step, T.Resize) and size is None and crop is None and not tensor:
            mode = getattr(step.interpolation, "value", str(step.interpolation))
            target = step.size if isinstance(step.size, int) else tuple(step.size)
            if mode not in _MODES or step.max_size is not None or (isinstance(target, tuple) and len(target) not in (1, 2)):
                return None
            side = (target, target) if isinstance(target, int) else (target[0], target[-1])
            size = side
        elif isinstance(step, T.CenterCrop) and crop is None and not tensor:
            crop = tuple(step.size) if len(step.size) == 2 else (step.size[0], step.size[0])
            if crop[0] > side[0] or crop[1] > side[1]:
                return None  # torchvision pads: not replayed
        elif isinstance(step, T.ToTensor) and not tensor:
            tensor = True
        elif isinstance(step, T.Normalize) and tensor and norm is None and not step.inplace:
            norm = (tuple(float(m) for m in step.mean), tuple(float(s) for s in step.std))
        elif name in _NO_OPS:
            continue
        else:
            return None
    if not tensor or norm is None:
        return None
    if size == (patch_px, patch_px):
        size = None  # Pillow returns a copy when the size does not change
    if crop == (size or (patch_px, patch_px)):
        crop = None
    return BatchPlan(size, mode, crop, *norm)


class BatchPreprocess:
    """``preprocess(batch)``: (N, H, W, 3) uint8 CPU tensor from the readers → (N, 3, S, S) float32 on ``device``.

    Args:
        transform: the encoder's per-image transform (PIL → tensor).
        patch_px: side of the patches read from the slide.
        device: the encoder's device.
        resize_on_device: resize with :func:`pillow_resize` on ``device`` (default: on a GPU) instead of asking
            the readers to resize with Pillow.
    """

    def __init__(self, transform: Callable, patch_px: int, device: str, resize_on_device: bool | None = None):
        self.transform, self.patch_px, self.device = transform, patch_px, device
        self.plan = plan_transform(transform, patch_px)
        on_device = not device.startswith("cpu") if resize_on_device is None else resize_on_device
        self.reader_resize = None if self.plan is None or self.plan.size is None or on_device else \
            (self.plan.size, self.plan.mode)
        self._consts: dict[str, Any] = {}

    @property
    def input_px(self) -> tuple[int, int]:
        """(height, width) of the patches the readers send."""
        return self.reader_resize[0] if self.reader_resize else (self.patch_px, self.patch_px)

    def __call__(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch

        if self.plan is None:
            from PIL import Image

            pixels = batch.numpy()
            return torch.stack([self.transform(Image.fromarray(p, "RGB")) for p in pixels]).to(self.device)
        plan = self.plan
        x = batch.to(self.device, non_blocking=batch.is_pinned()).permute(0, 3, 1, 2)  # NCHW view of NHWC memory
        if plan.size is not None and self.reader_resize is None:
            x = pillow_resize(x, plan.size, plan.mode)
        if plan.crop is not None:
            x = _center_crop(x, plan.crop)
        mean, std = self._constants(plan)
        return x.to(torch.float32).div(255).sub_(mean).div_(std).contiguous()

    def _constants(self, plan: BatchPlan):
        import torch

        if "mean" not in self._consts:
            self._consts["mean"] = torch.tensor(plan.mean, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
            self._consts["std"] = torch.tensor(plan.std, dtype=torch.float32, device=self.device).view(1, -1, 1, 1)
        return self._consts["mean"], self._consts["std"]


def resize_like_pil(patch: np.ndarray, resize: tuple[tuple[int, int], str] | None) -> np.ndarray:
    """``patch`` (uint8 RGB) resized as torchvision's ``Resize`` does on a PIL image (Pillow, no reducing gap)."""
    if resize is None:
        return patch
    from PIL import Image

    (h, w), mode = resize
    filters = {"bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC}
    return np.asarray(Image.fromarray(patch, "RGB").resize((w, h), filters[mode]))


def _center_crop(x: "torch.Tensor", crop: tuple[int, int]) -> "torch.Tensor":
    """torchvision's centre crop (top = round((h - th) / 2)) of an (N, C, H, W) tensor."""
    h, w = x.shape[-2:]
    top, left = int(round((h - crop[0]) / 2.0)), int(round((w - crop[1]) / 2.0))
    return x[..., top:top + crop[0], left:left + crop[1]]


def _filter(mode: str) -> tuple[Callable[[np.ndarray], np.ndarray], float]:
    """Pillow's filter function (vectorised) and support for ``mode``."""
    if mode == "bilinear":
        return (lambda x: np.maximum(0.0, 1.0 - np.abs(x))), 1.0
    a = -0.5

    def bicubic(x: np.ndarray) -> np.ndarray:
        x = np.abs(x)
        near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
        far = (((x - 5) * x + 8) * x - 4) * a
        return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))

    return bicubic, 2.0


def pillow_coefficients(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """Pillow's 8-bit fixed-point resampling weights as an (out_size, in_size) float64 matrix of integers
    (``precompute_coeffs`` + ``normalize_coeffs_8bpc`` in libImaging/Resample.c)."""
    filt, support = _filter(mode)
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    ss = 1.0 / filterscale
    matrix = np.zeros((out_size, in_size), np.float64)
    for xx in range(out_size):
        center = (xx + 0.5) * scale
        xmin = max(int(center - support + 0.5), 0)
        xmax = min(int(center + support + 0.5), in_size)
        weights = filt((np.arange(xmin, xmax) - center + 0.5) * ss)
        total = np.cumsum(weights)[-1] if len(weights) else 0.0  # summed in order, as Pillow does
        if total != 0.0:
            weights = weights / total
        fixed = np.where(weights < 0, np.trunc(-0.5 + weights * (1 << PRECISION_BITS)),
                         np.trunc(0.5 + weights * (1 << PRECISION_BITS)))
        matrix[xx, xmin:xmax] = fixed
    return matrix


def pillow_resize(x: "torch.Tensor", size: tuple[int, int], mode: str) -> "torch.Tensor":
    """Pillow's ``Image.resize`` (horizontal pass, clip to 8 bits, vertical pass) of an (N, C, H, W) uint8
    tensor, on its device; bit-identical to Pillow."""
    import torch

    h, w = x.shape[-2:]
    out_h, out_w = size
    y = x.to(torch.float64)
    half, one = float(1 << (PRECISION_BITS - 1)), float(1 << PRECISION_BITS)
    if out_w != w:
        kx = torch.from_numpy(pillow_coefficients(w, out_w, mode)).to(x.device)
        y = torch.floor((y @ kx.T + half) / one).clamp_(0, 255)
    if out_h != h:
        ky = torch.from_numpy(pillow_coefficients(h, out_h, mode)).to(x.device)
        y = torch.floor((ky @ y + half) / one).clamp_(0, 255)
    return y.to(torch.uint8)
