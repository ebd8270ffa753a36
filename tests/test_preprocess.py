"""Batched preprocessing (issue 26): the model's own torchvision transform, replayed on uint8 batches, gives the
per-patch transform's input bit for bit, on the readers' path (CPU) and on the device path (the GPU's code, run
here on the CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from indexer.models.backends import HFImagePreprocess
from indexer.models.encoders import load_encoder
from indexer.models.preprocess import BatchPreprocess, pillow_resize, plan_transform, resize_like_pil

MEAN, STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)


def patches(n: int, side: int, seed: int = 0) -> np.ndarray:
    """Noise, gradients and flat areas (rounding edge cases for a resampler) as (n, side, side, 3) uint8."""
    rng = np.random.default_rng(seed)
    out = rng.integers(0, 256, (n, side, side, 3), dtype=np.uint8)
    ramp = np.linspace(0, 255, side)
    out[1 % n] = np.clip(ramp[None, :, None] + ramp[:, None, None] / 3, 0, 255).astype(np.uint8)
    out[2 % n] = 255
    out[3 % n, : side // 2] = 0
    return out


def per_patch(transform, pixels: np.ndarray) -> torch.Tensor:
    """The current path: the transform on each PIL patch, stacked."""
    return torch.stack([transform(Image.fromarray(p, "RGB")) for p in pixels])


def batched(preprocess: BatchPreprocess, pixels: np.ndarray) -> torch.Tensor:
    """The fast path: readers resize (when asked), the batch goes through ``preprocess``."""
    sent = np.stack([resize_like_pil(p, preprocess.reader_resize) for p in pixels])
    return preprocess(torch.from_numpy(sent))


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
@pytest.mark.parametrize("sizes", [(224, 64), (224, 448), (256, 224), (300, 97), (100, 333), (224, 384), (37, 37)])
def test_pillow_resize_is_pillow_bit_for_bit(mode, sizes):
    side, out = sizes
    pixels = patches(4, side, seed=side + out)
    pil = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[mode]
    expected = np.stack([np.asarray(Image.fromarray(p).resize((out, out), pil)) for p in pixels])
    got = pillow_resize(torch.from_numpy(pixels).permute(0, 3, 1, 2), (out, out), mode).permute(0, 2, 3, 1).numpy()
    np.testing.assert_array_equal(got, expected)


def conch_style(size: int):
    """CONCH's transform (conch-fork's ``image_transform``): Resize, CenterCrop, a convert function, ToTensor, Normalize."""
    def _convert_to_rgb(image):
        return image.convert("RGB")

    return T.Compose([T.Resize(size, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(size), _convert_to_rgb,
                      T.ToTensor(), T.Normalize(MEAN, STD)])


TRANSFORMS = {
    "tiny (open_clip, 64 px)": lambda: load_encoder("tiny", device="cpu").preprocess,
    "CONCH-style 448 px": lambda: conch_style(448),
    "resize to the patch size": lambda: conch_style(224),
    "crop after a resize": lambda: T.Compose([T.Resize(80, interpolation=T.InterpolationMode.BILINEAR),
                                              T.CenterCrop(64), T.ToTensor(), T.Normalize(MEAN, STD)]),
}


@pytest.mark.parametrize("name", list(TRANSFORMS))
@pytest.mark.parametrize("on_device", [False, True], ids=["readers-resize", "device-resize"])
def test_batched_input_equals_the_transform_bit_for_bit(name, on_device):
    transform = TRANSFORMS[name]()
    preprocess = BatchPreprocess(transform, 224, "cpu", resize_on_device=on_device)
    assert preprocess.plan is not None
    pixels = patches(6, 224)
    expected = per_patch(transform, pixels)
    got = batched(preprocess, pixels)
    assert got.shape == expected.shape and got.dtype == torch.float32
    assert torch.equal(got, expected)


def test_openclip_vit_transform_needs_no_resize_and_is_exact():
    encoder = load_encoder("openclip:ViT-B-16", checkpoint="random", device="cpu")
    preprocess = BatchPreprocess(encoder.preprocess, 224, "cpu")
    assert preprocess.plan.size is None and preprocess.reader_resize is None and preprocess.input_px == (224, 224)
    pixels = patches(3, 224, seed=5)
    assert torch.equal(batched(preprocess, pixels), per_patch(encoder.preprocess, pixels))


def test_readers_resize_on_the_cpu_and_the_device_resizes_on_a_gpu():
    tiny = load_encoder("tiny", device="cpu").preprocess
    assert BatchPreprocess(tiny, 224, "cpu").reader_resize == ((64, 64), "bicubic")
    assert BatchPreprocess(tiny, 224, "cpu").input_px == (64, 64)
    assert BatchPreprocess(tiny, 224, "cuda").reader_resize is None  # plan only: nothing runs on a GPU here
    assert BatchPreprocess(tiny, 224, "cuda").input_px == (224, 224)


class _Processor:
    """A stand-in Hugging Face image processor: scales to [0, 1] and shifts."""

    def __call__(self, images, return_tensors):
        return {"pixel_values": torch.from_numpy(np.asarray(images, np.float32) / 255.0 - 0.5).permute(2, 0, 1)[None]}


@pytest.mark.parametrize("transform", [
    T.Compose([T.RandomCrop(64), T.ToTensor()]),
    T.Compose([T.Resize(64, interpolation=T.InterpolationMode.LANCZOS), T.ToTensor(), T.Normalize(MEAN, STD)]),
    T.Compose([T.Resize(64), T.ToTensor()]),  # no Normalize
    HFImagePreprocess(_Processor()),
], ids=["random-crop", "lanczos", "no-normalize", "hf-processor"])
def test_other_transforms_are_applied_per_patch_as_before(transform):
    assert plan_transform(transform, 224) is None
    preprocess = BatchPreprocess(transform, 224, "cpu")
    assert preprocess.reader_resize is None and preprocess.input_px == (224, 224)
    pixels = patches(3, 224, seed=9)
    torch.manual_seed(0)
    expected = per_patch(transform, pixels)
    torch.manual_seed(0)
    assert torch.equal(preprocess(torch.from_numpy(pixels)), expected)
