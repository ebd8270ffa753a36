"""Encoders behind optional extras: CONCH (`slidesearch[conch]`) and PLIP (`slidesearch[plip]`)."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any, Sequence

from indexer.models.encoders import (
    Encoder,
    EncoderInfo,
    check_checkpoint_fits,
    file_sha256,
    first_line,
    module_available,
    register_encoder,
    require_module,
)
from indexer.errors import ModelError

CONCH_CONFIG: str | dict = "conch_ViT-B-16"  # a conch-fork config name, or a config dict (tests shrink it)
CONCH_REPO = "MahmoodLab/CONCH"
PLIP_REPO = "vinid/plip"
_CONCH_HOW = (f"pip install 'slidesearch[conch]'; request access to hf.co/{CONCH_REPO}, download pytorch_model.bin "
              "and pass --checkpoint PATH")
_PLIP_HOW = (f"pip install 'slidesearch[plip]'; `huggingface-cli download {PLIP_REPO}` (then it loads by name) "
             "or pass --checkpoint FOLDER (a save_pretrained CLIP folder)")


class ConchEncoder(Encoder):
    """CONCH ViT-B/16 (CoCa) through conch-fork's ``create_model_from_pretrained``."""

    def __init__(self, checkpoint: str | Path, *, device: str, batch_size: int):
        factory = require_module("conch.open_clip_custom", "conch")
        check_checkpoint_fits(_conch_expected_shapes(factory), _read_conch(factory, checkpoint), checkpoint,
                              "CONCH ViT-B/16 (CoCa)")
        try:
            model, preprocess = factory.create_model_from_pretrained(copy.deepcopy(CONCH_CONFIG), str(checkpoint))
        except Exception as exc:
            raise ModelError(f"cannot load CONCH checkpoint {checkpoint} ({first_line(exc)})") from None
        self.model = model.eval().to(device)
        self.tokenizer = factory.get_tokenizer()
        self.name, self.device, self.batch_size = "conch", device, batch_size
        self.checkpoint, self.weights_sha256 = str(checkpoint), file_sha256(checkpoint)
        size = model.visual.image_size
        self.image_size = int(size if isinstance(size, int) else size[0])
        self.preprocess = preprocess
        self.preprocess_summary = {"size": self.image_size, "mean": list(model.visual.image_mean),
                                   "std": list(model.visual.image_std), "interpolation": "bicubic",
                                   "resize_mode": "shortest"}
        self.dim = int(model.embed_dim)

    def _image_features(self, pixels):
        return self.model.encode_image(pixels, proj_contrast=True, normalize=False)

    def _text_features(self, texts: Sequence[str]):
        return self.model.encode_text(conch_tokenize(self.tokenizer, list(texts)).to(self.device), normalize=False)


def conch_tokenize(tokenizer: Any, texts: list[str]):
    """conch-fork's ``tokenize`` (127 tokens + a <pad> slot that CoCa fills with <cls>).

    conch-fork calls ``batch_encode_plus``, which transformers 5 removed; calling the tokenizer
    with the same arguments gives the same ids on transformers 4 and 5.
    """
    import torch.nn.functional as F

    tokens = tokenizer(texts, max_length=127, add_special_tokens=True, return_token_type_ids=False,
                       truncation=True, padding="max_length", return_tensors="pt")
    return F.pad(tokens["input_ids"], (0, 1), value=tokenizer.pad_token_id)


def _conch_expected_shapes(factory: Any) -> dict[str, Any]:
    import torch

    from conch.open_clip_custom.factory import CFG_DIR

    cfg = copy.deepcopy(CONCH_CONFIG)
    if not isinstance(cfg, dict):
        cfg = json.loads((CFG_DIR / f"{cfg}.json").read_text())
    cfg.pop("custom_text", None)
    with torch.device("meta"):  # shapes only: no memory, no random init
        return dict(factory.CoCa(**cfg).state_dict())


def _read_conch(factory: Any, checkpoint: str | Path) -> dict[str, Any]:
    from conch.open_clip_custom.factory import read_state_dict

    try:
        state_dict = read_state_dict(str(checkpoint))
    except Exception as exc:
        raise ModelError(f"cannot read CONCH checkpoint {checkpoint} ({first_line(exc)})") from None
    if not isinstance(state_dict, dict):
        raise ModelError(f"CONCH checkpoint {checkpoint} holds no state dict")
    return state_dict


def _make_conch(spec: str, *, checkpoint: str | None, device: str, batch_size: int) -> Encoder:
    require_module("conch.open_clip_custom", "conch")
    if checkpoint is None:
        checkpoint = _hub_file(CONCH_REPO, "pytorch_model.bin")
        if checkpoint is None:
            raise ModelError(f"conch needs its weights: {_CONCH_HOW}")
    if Path(checkpoint).is_dir():
        checkpoint = str(Path(checkpoint) / "pytorch_model.bin")
    return ConchEncoder(checkpoint, device=device, batch_size=batch_size)


class PlipEncoder(Encoder):
    """PLIP (a Hugging Face ``CLIPModel``) from a ``save_pretrained`` folder."""

    def __init__(self, folder: str | Path, *, device: str, batch_size: int):
        transformers = require_module("transformers", "plip")
        transformers.utils.logging.disable_progress_bar()  # our own progress bars only
        transformers.utils.logging.set_verbosity_error()  # key mismatches are reported below, in one line
        try:
            model, info = transformers.CLIPModel.from_pretrained(str(folder), output_loading_info=True)
            processor = transformers.CLIPProcessor.from_pretrained(str(folder))
        except Exception as exc:
            raise ModelError(f"cannot load PLIP from {folder} as a Hugging Face CLIP folder ({first_line(exc)})") from None
        bad = {k: list(info.get(k, [])) for k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
        if any(bad.values()):
            n_expected = len(model.state_dict())
            raise ModelError(
                f"checkpoint {folder} does not fit the expected architecture PLIP (HF CLIPModel, {n_expected} tensors): "
                f"{len(bad['missing_keys'])} missing keys, {len(bad['unexpected_keys'])} unexpected keys, "
                f"{len(bad['mismatched_keys'])} tensors of the wrong shape")
        self.model = model.eval().to(device)
        self.tokenizer = processor.tokenizer
        self.name, self.device, self.batch_size = "plip", device, batch_size
        self.checkpoint, self.weights_sha256 = str(folder), file_sha256(_weights_in(folder))
        self.preprocess = HFImagePreprocess(processor.image_processor)
        self.image_size = int(model.config.vision_config.image_size)
        ip = processor.image_processor
        self.preprocess_summary = {"size": self.image_size, "mean": list(ip.image_mean), "std": list(ip.image_std),
                                   "processor": type(ip).__name__, "resize": dict(ip.size)}
        self.dim = int(model.config.projection_dim)

    def _image_features(self, pixels):
        return _pooled(self.model.get_image_features(pixel_values=pixels))

    def _text_features(self, texts: Sequence[str]):
        tokens = self.tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
        return _pooled(self.model.get_text_features(**tokens))


class HFImagePreprocess:
    """Picklable PIL → (3, H, W) tensor through a Hugging Face image processor."""

    def __init__(self, image_processor: Any):
        self.image_processor = image_processor

    def __call__(self, image):
        return self.image_processor(images=image, return_tensors="pt")["pixel_values"][0]


def _pooled(output: Any):
    """transformers < 5 returns the projected tensor, >= 5 an output whose pooler_output holds it."""
    return output if hasattr(output, "dim") else output.pooler_output


def _weights_in(folder: str | Path) -> Path:
    folder = Path(folder)
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return folder / name
    return folder  # sharded or unusual layout: fingerprint the whole folder


def _make_plip(spec: str, *, checkpoint: str | None, device: str, batch_size: int) -> Encoder:
    require_module("transformers", "plip")
    if checkpoint is None:
        checkpoint = _hub_snapshot(PLIP_REPO)
        if checkpoint is None:
            raise ModelError(f"plip needs its weights: {_PLIP_HOW}")
    if not Path(checkpoint).is_dir():
        raise ModelError(f"plip expects a Hugging Face CLIP folder (config.json + weights), got file {checkpoint}")
    return PlipEncoder(checkpoint, device=device, batch_size=batch_size)


def _hub_file(repo: str, filename: str) -> str | None:
    """A file from the local Hugging Face cache, or None (never touches the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    found = try_to_load_from_cache(repo, filename)
    return found if isinstance(found, str) else None


def _hub_snapshot(repo: str) -> str | None:
    config = _hub_file(repo, "config.json")
    return str(Path(config).parent) if config else None


def _availability(package: str, extra: str, weights: str | None) -> tuple[bool, str]:
    if not module_available(package):
        return False, f"optional package missing (pip install 'slidesearch[{extra}]')"
    if weights is None:
        return False, "package installed; weights not in the Hugging Face cache (pass --checkpoint)"
    return True, "package installed; weights in the Hugging Face cache"


def _conch_info() -> EncoderInfo:
    ok, status = _availability("conch", "conch", _hub_file(CONCH_REPO, "pytorch_model.bin"))
    return EncoderInfo("conch", 512, "CONCH ViT-B/16 (CoCa, 448 px; Lu et al. 2024), pathology vision-language",
                       ok, _CONCH_HOW, status)


def _plip_info() -> EncoderInfo:
    ok, status = _availability("transformers", "plip", _hub_snapshot(PLIP_REPO))
    return EncoderInfo("plip", 512, "PLIP ViT-B/32 (CLIP fine-tuned on OpenPath; Huang et al. 2023)", ok, _PLIP_HOW,
                       status)


register_encoder("conch", _make_conch, _conch_info)
register_encoder("plip", _make_plip, _plip_info)
