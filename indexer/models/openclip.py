"""open_clip encoders: the `tiny` test model, any `openclip:<arch>[@tag]`, and QuiltNet B/32 and B/16.

Weights for ``openclip:<arch>`` / ``quiltnet-*`` (``--checkpoint``):
  * a file: an open_clip state dict (``.bin``/``.pt``/``.safetensors``, bare or ``{"state_dict": ...}``),
    built with open_clip's own ``<arch>`` config (QuiltNet: ViT-B-32 / ViT-B-16 with the standard CLIP
    text tower, 77 tokens);
  * a folder: a downloaded hub snapshot with ``open_clip_config.json`` (its exact config is used);
  * ``random``: fixed-seed random weights (benchmarks);
  * a tag in the name, ``openclip:ViT-B-16@laion2b_s34b_b88k`` (open_clip's cache or network);
  * nothing, for QuiltNet: ``hf-hub:wisdomik/QuiltNet-B-32`` / ``-B-16`` from the Hugging Face cache.
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator, Sequence

from indexer.models.encoders import (
    RANDOM_WEIGHTS,
    Encoder,
    EncoderInfo,
    check_checkpoint_fits,
    file_sha256,
    first_line,
    register_encoder,
    state_dict_sha256,
)
from indexer.errors import ModelError

RANDOM_SEED = 0  # random-init weights are reproducible: same seed → same weights → same sha256
# ~3.7 M parameters (3.2 M of them the text token table); 5-10k images/s encoder-only on 2 idle CPU cores.
TINY_CONFIG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 96, "layers": 4, "head_width": 32, "mlp_ratio": 2.0},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
QUILTNET = {"quiltnet-b32": ("ViT-B-32", "wisdomik/QuiltNet-B-32"), "quiltnet-b16": ("ViT-B-16", "wisdomik/QuiltNet-B-16")}
_HUB_WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.bin")
_DIR_WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pth", "*.pt")


class OpenClipEncoder(Encoder):
    """Any open_clip CLIP-style model (``encode_image`` / ``encode_text`` + tokenizer)."""

    def __init__(self, name: str, model: Any, tokenizer: Any, *, weights_sha256: str, checkpoint: str | None,
                 device: str, batch_size: int):
        import open_clip
        import torch
        from open_clip.transform import PreprocessCfg, image_transform_v2

        cfg = dict(open_clip.get_model_preprocess_cfg(model))
        self.model = model.eval().to(device)
        self.tokenizer = tokenizer
        self.name, self.device, self.batch_size = name, device, batch_size
        self.weights_sha256, self.checkpoint = weights_sha256, checkpoint
        size = cfg["size"]
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.preprocess = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
        self.preprocess_summary = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
        self.dim = getattr(model.visual, "output_dim", None)
        if not isinstance(self.dim, int):  # towers without the attribute: ask the model
            with torch.inference_mode():
                self.dim = int(self._text_features(["dimension probe"]).shape[-1])

    def _image_features(self, pixels):
        return self.model.encode_image(pixels)

    def _text_features(self, texts: Sequence[str]):
        return self.model.encode_text(self.tokenizer(list(texts)).to(self.device))


@contextlib.contextmanager
def _seeded_and_quiet() -> Iterator[None]:
    """Fixed-seed random init that leaves the global RNG untouched; silence open_clip's info/warning logs."""
    import torch

    logging.disable(logging.WARNING)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            yield
    finally:
        logging.disable(logging.NOTSET)


def load_open_clip_weights(model: Any, path: str | Path, arch: str) -> None:
    """Load an open_clip checkpoint through open_clip's own loader, refusing one of another architecture.

    open_clip reads ``.bin``/``.pt``/``.safetensors``, unwraps ``state_dict``/``module.`` and converts
    third-party layouts; the massaged state dict is checked key by key before it is loaded strictly.
    """
    import open_clip

    load = model.load_state_dict

    def checked_load(state_dict, strict=True, **kwargs):
        check_checkpoint_fits(model.state_dict(), state_dict, path, arch)
        return load(state_dict, strict=True, **kwargs)

    model.load_state_dict = checked_load  # open_clip.load_checkpoint calls model.load_state_dict(...)
    failure: Exception | None = None
    try:
        open_clip.load_checkpoint(model, str(path), strict=True)
    except ModelError:
        raise
    except Exception as exc:  # open_clip's conversions assert on foreign shapes; or not a checkpoint at all
        failure = exc
    finally:
        del model.load_state_dict
    if failure is not None:
        _explain_failed_load(model, path, arch, failure)


def _explain_failed_load(model: Any, path: str | Path, arch: str, exc: Exception) -> None:
    """Raise the most useful one-line error for a checkpoint open_clip could not load."""
    import open_clip

    try:
        raw = open_clip.factory.load_state_dict(str(path))
    except Exception:
        raw = None
    if isinstance(raw, dict) and raw:
        check_checkpoint_fits(model.state_dict(), raw, path, arch)
    raise ModelError(f"cannot read checkpoint {path} as an open_clip {arch} state dict ({first_line(exc)})") from None


def build_open_clip(name: str, source: str | dict, arch: str, *, weights: str | Path | None, tag: str | None,
                    device: str, batch_size: int) -> OpenClipEncoder:
    """Create an open_clip model from a built-in/hub/local-dir name or a config dict, then load ``weights``.

    ``weights=None`` keeps the fixed-seed random initialisation (fingerprinted from the tensors).
    """
    import open_clip
    from open_clip.model import set_model_preprocess_cfg

    try:
        with _seeded_and_quiet():
            if isinstance(source, dict):
                model = open_clip.CLIP(**source)
                set_model_preprocess_cfg(model, {"size": source["vision_cfg"]["image_size"], **_default_preprocess()})
                tokenizer = open_clip.SimpleTokenizer(context_length=source["text_cfg"]["context_length"])
            else:
                model = open_clip.create_model(source, pretrained=tag, load_weights=False)
                tokenizer = open_clip.get_tokenizer(source)
    except Exception as exc:
        raise ModelError(f"cannot create open_clip model {arch} for {name} ({first_line(exc)})") from None
    if weights is not None:
        load_open_clip_weights(model, weights, arch)
    sha = file_sha256(weights) if weights is not None else state_dict_sha256(model)
    checkpoint = str(weights) if weights is not None else None
    return OpenClipEncoder(name, model, tokenizer, weights_sha256=sha, checkpoint=checkpoint, device=device,
                           batch_size=batch_size)


def _default_preprocess() -> dict[str, Any]:
    from dataclasses import asdict

    from open_clip.transform import PreprocessCfg

    return {k: v for k, v in asdict(PreprocessCfg()).items() if k != "size"}


def _local(arch: str, checkpoint: str) -> tuple[str, Path]:
    """(open_clip source, weights file) for a local file, or a folder holding open_clip_config.json."""
    path = Path(checkpoint)
    if not path.is_dir():
        return arch, path
    found = [p for pattern in _DIR_WEIGHT_FILES for p in sorted(path.glob(pattern))]
    if not found:
        raise ModelError(f"no weights file (*.safetensors, *.bin, *.pth, *.pt) in checkpoint folder {path}")
    source = f"local-dir:{path}" if (path / "open_clip_config.json").is_file() else arch
    return source, found[0]


def _make_tiny(spec: str, *, checkpoint: str | None, device: str, batch_size: int) -> Encoder:
    weights = None if checkpoint in (None, RANDOM_WEIGHTS) else checkpoint
    return build_open_clip("tiny", TINY_CONFIG, "tiny (open_clip CLIP, ViT 64px/16)", weights=weights, tag=None,
                           device=device, batch_size=batch_size)


def _make_openclip(spec: str, *, checkpoint: str | None, device: str, batch_size: int) -> Encoder:
    import open_clip

    arch, _, tag = spec.partition("@")
    if arch not in open_clip.list_models():
        raise ModelError(f"unknown open_clip architecture '{arch}' (e.g. ViT-B-16, ViT-B-32, ViT-L-14; "
                         f"see open_clip.list_models())")
    name = f"openclip:{spec}"
    if tag:
        if checkpoint is not None:
            raise ModelError(f"{name}: give either a pretrained tag (@{tag}) or --checkpoint, not both")
        tags = open_clip.list_pretrained_tags_by_model(arch)
        if tag not in tags:
            raise ModelError(f"unknown pretrained tag '{tag}' for {arch}; known tags: {', '.join(tags) or 'none'}")
        try:
            with _seeded_and_quiet():
                weights = open_clip.download_pretrained(open_clip.get_pretrained_cfg(arch, tag))
        except Exception as exc:
            raise ModelError(f"cannot fetch weights for {name} ({first_line(exc)}); download them on a connected "
                             f"machine and pass --checkpoint PATH") from None
        return build_open_clip(name, arch, arch, weights=weights, tag=tag, device=device, batch_size=batch_size)
    if checkpoint is None:
        raise ModelError(f"{name} needs weights: --checkpoint PATH (an open_clip state dict or folder), a pretrained "
                         f"tag (openclip:{arch}@TAG), or --checkpoint random for random weights")
    if checkpoint == RANDOM_WEIGHTS:
        return build_open_clip(name, arch, arch, weights=None, tag=None, device=device, batch_size=batch_size)
    source, weights = _local(arch, checkpoint)
    return build_open_clip(name, source, arch, weights=weights, tag=None, device=device, batch_size=batch_size)


def _make_quiltnet(spec: str, *, checkpoint: str | None, device: str, batch_size: int) -> Encoder:
    arch, repo = QUILTNET[spec]
    if checkpoint == RANDOM_WEIGHTS:
        return build_open_clip(spec, arch, arch, weights=None, tag=None, device=device, batch_size=batch_size)
    if checkpoint is not None:
        source, weights = _local(arch, checkpoint)
        return build_open_clip(spec, source, arch, weights=weights, tag=None, device=device, batch_size=batch_size)
    try:
        from open_clip.pretrained import download_pretrained_from_hf

        with _seeded_and_quiet():
            weights = download_pretrained_from_hf(repo)
    except Exception as exc:
        raise ModelError(f"{spec}: weights hf-hub:{repo} are not available here ({first_line(exc)}); "
                         f"{_quilt_how(repo)}") from None
    return build_open_clip(spec, f"hf-hub:{repo}", arch, weights=weights, tag=None, device=device,
                           batch_size=batch_size)


def _quilt_how(repo: str) -> str:
    return (f"run `huggingface-cli download {repo}` on a connected machine (then it loads by name), "
            f"or pass --checkpoint PATH to its open_clip_pytorch_model.bin or the downloaded folder")


def hub_cached(repo: str) -> bool:
    """Whether a hub repo's open_clip weights are already in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return any(isinstance(try_to_load_from_cache(repo, f), str) for f in _HUB_WEIGHT_FILES)


def _quilt_info(name: str, arch: str, repo: str) -> EncoderInfo:
    cached = hub_cached(repo)
    status = "weights in the Hugging Face cache" if cached else "weights not in the Hugging Face cache"
    return EncoderInfo(name, 512, f"QuiltNet {arch} (Quilt-1M histopathology CLIP, hf-hub:{repo})", cached,
                       _quilt_how(repo), status)


register_encoder("tiny", _make_tiny, EncoderInfo(
    "tiny", TINY_CONFIG["embed_dim"],
    "random-weight open_clip CLIP (~3.7 M params, 64 px) for tests and the demo; NOT semantically meaningful",
    True, "built in (fixed-seed random weights)", "built in"))
register_encoder("openclip:", _make_openclip, EncoderInfo(
    "openclip:<arch>[@tag]", 0,
    "any open_clip architecture, e.g. openclip:ViT-B-16@laion2b_s34b_b88k; dim depends on <arch>",
    True, "--checkpoint PATH (open_clip state dict .bin/.pt/.safetensors, or a folder with open_clip_config.json), "
          "@tag (open_clip cache or network), or --checkpoint random (random weights)",
    "needs --checkpoint, @tag or --checkpoint random"))
for _name, (_arch, _repo) in QUILTNET.items():
    register_encoder(_name, _make_quiltnet, lambda n=_name, a=_arch, r=_repo: _quilt_info(n, a, r))
