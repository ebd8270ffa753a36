"""Encoder registry: tiny/open_clip/QuiltNet/CONCH/PLIP loading through their real checkpoint formats, and errors."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import pickle
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from indexer.models.encoders import (
    EncoderInfo,
    list_encoders,
    load_encoder,
    register_encoder,
    resolve_device,
    state_dict_sha256,
)
from indexer.errors import DeviceError, ModelError

# Encoding the same input alone or inside a batch runs different matmul shapes (fp32, CPU):
# results agree to float rounding, far below any retrieval-relevant difference.
BATCH_ATOL = 1e-5


def _images(n: int, size: int = 224, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(n)]


def _assert_unit_rows(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)

def _assert_towers_work(enc, image_px: int) -> None:
    """Both towers give unit rows of ``enc.dim``; a patch alone equals the same patch in a batch."""
    imgs = _images(3, size=image_px)
    x = enc.encode_images(imgs)
    _assert_unit_rows(x, 3, enc.dim)
    np.testing.assert_allclose(enc.encode_images([imgs[1]])[0], x[1], atol=BATCH_ATOL)
    _assert_unit_rows(enc.encode_text(["tumour with necrosis", "stroma"]), 2, enc.dim)



def _one_line_error(excinfo: pytest.ExceptionInfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message and len(message) < 400, message
    return message


@pytest.fixture(scope="module")
def tiny():
    return load_encoder("tiny", device="cpu", batch_size=8)


# ---- tiny ------------------------------------------------------------------------------------
def test_tiny_embeddings_are_unit_float32_and_reproducible(tiny):
    imgs = _images(5)
    x = tiny.encode_images(imgs)
    _assert_unit_rows(x, 5, tiny.dim)
    _assert_unit_rows(tiny.encode_text(["tumour", "stroma", "necrosis"]), 3, tiny.dim)
    assert not np.allclose(x[0], x[1])  # different images, different embeddings
    again = load_encoder("tiny", device="cpu")
    assert again.weights_sha256 == tiny.weights_sha256 == state_dict_sha256(tiny.model)
    np.testing.assert_array_equal(again.encode_images(imgs), x)
    assert 3_000_000 < sum(p.numel() for p in tiny.model.parameters()) < 4_500_000


def test_same_patch_alone_or_in_batch(tiny):
    imgs = _images(11, seed=3)
    batch = tiny.encode_images(imgs)  # batch_size 8: chunks of 8 and 3
    for i in (0, 7, 10):
        np.testing.assert_allclose(tiny.encode_images([imgs[i]])[0], batch[i], atol=BATCH_ATOL)


def test_tensor_batch_equals_pil_list_and_preprocess_pickles(tiny):
    imgs = _images(3, size=300, seed=5)
    preprocess = pickle.loads(pickle.dumps(tiny.preprocess))
    pixels = torch.stack([preprocess(im) for im in imgs])
    assert pixels.shape == (3, 3, tiny.image_size, tiny.image_size)
    np.testing.assert_array_equal(tiny.encode_images(pixels), tiny.encode_images(imgs))


def test_describe_has_manifest_fields(tiny):
    d = tiny.describe()
    assert d["name"] == "tiny" and d["dim"] == tiny.dim == 128 and d["image_size"] == 64
    assert len(d["weights_sha256"]) == 64 and d["preprocess"]["size"] == 64
    json.dumps(d)


def test_empty_inputs(tiny):
    assert tiny.encode_images([]).shape == (0, tiny.dim)
    assert tiny.encode_text([]).shape == (0, tiny.dim)


# ---- open_clip checkpoint formats --------------------------------------------------------------
def _other_tiny_state_dict():
    import open_clip

    from indexer.models.openclip import TINY_CONFIG

    torch.manual_seed(123)
    return open_clip.CLIP(**TINY_CONFIG).state_dict()


@pytest.mark.parametrize("fmt", ["bin", "pt-wrapped", "safetensors"])
def test_open_clip_state_dict_formats_load(tmp_path, tiny, fmt):
    state = _other_tiny_state_dict()
    if fmt == "bin":
        path = tmp_path / "open_clip_pytorch_model.bin"
        torch.save(state, path)
    elif fmt == "pt-wrapped":  # open_clip training checkpoint: {"epoch", "state_dict"} with DDP "module." keys
        path = tmp_path / "epoch_1.pt"
        torch.save({"epoch": 1, "name": "run", "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        from safetensors.torch import save_file

        path = tmp_path / "open_clip_model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    enc = load_encoder("tiny", checkpoint=str(path), device="cpu")
    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert enc.describe()["checkpoint"] == str(path)
    loaded = {k: v for k, v in enc.model.state_dict().items()}
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    x = enc.encode_images(_images(2))
    _assert_unit_rows(x, 2, 128)
    assert not np.allclose(x, tiny.encode_images(_images(2)), atol=1e-3)  # really the saved weights


@pytest.fixture(scope="module")
def b32(tmp_path_factory):
    """Random ViT-B-32 weights and the same weights saved as an open_clip state dict (QuiltNet-B-32's format)."""
    random_enc = load_encoder("quiltnet-b32", checkpoint="random", device="cpu", batch_size=4)
    path = tmp_path_factory.mktemp("b32") / "open_clip_pytorch_model.bin"
    torch.save(random_enc.model.state_dict(), path)
    return random_enc, path


def test_quiltnet_b32_local_state_dict(b32):
    """The saved file loads by path and gives exactly the saved model's outputs."""
    random_enc, path = b32
    enc = load_encoder("quiltnet-b32", checkpoint=str(path), device="cpu", batch_size=4)
    assert (enc.dim, enc.image_size) == (512, 224)
    imgs = _images(2)
    x = enc.encode_images(imgs)
    _assert_unit_rows(x, 2, 512)
    np.testing.assert_allclose(x, random_enc.encode_images(imgs), atol=1e-5)
    np.testing.assert_allclose(enc.encode_text(["tumour"]), random_enc.encode_text(["tumour"]), atol=1e-5)


def test_open_clip_local_dir_uses_its_config(tmp_path):
    """A downloaded hub folder (open_clip_config.json + weights) is built from its own config."""
    import open_clip

    from indexer.models.openclip import TINY_CONFIG

    cfg = copy.deepcopy(TINY_CONFIG)
    cfg["embed_dim"] = 48
    (tmp_path / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    torch.manual_seed(7)
    torch.save(open_clip.CLIP(**cfg).state_dict(), tmp_path / "open_clip_pytorch_model.bin")
    enc = load_encoder("quiltnet-b16", checkpoint=str(tmp_path), device="cpu")
    _assert_unit_rows(enc.encode_images(_images(2)), 2, 48)
    assert enc.checkpoint.endswith("open_clip_pytorch_model.bin")


# ---- errors ------------------------------------------------------------------------------------
def test_unknown_model_lists_known_ones():
    with pytest.raises(ModelError) as excinfo:
        load_encoder("resnet-banana")
    message = _one_line_error(excinfo)
    assert "resnet-banana" in message
    assert all(name in message for name in ("tiny", "openclip:<arch>", "quiltnet-b32", "conch", "plip"))


def test_missing_checkpoint_is_one_line(tmp_path):
    with pytest.raises(ModelError) as excinfo:
        load_encoder("quiltnet-b32", checkpoint=str(tmp_path / "nope.bin"))
    assert "checkpoint not found" in _one_line_error(excinfo)


def test_openclip_needs_weights_unless_random_is_explicit():
    with pytest.raises(ModelError) as excinfo:
        load_encoder("openclip:ViT-B-16")
    assert "--checkpoint random" in _one_line_error(excinfo)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("openclip:NotAViT-9")
    assert "NotAViT-9" in _one_line_error(excinfo)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("openclip:ViT-B-16@no_such_tag")
    message = _one_line_error(excinfo)
    assert "no_such_tag" in message and "laion2b_s34b_b88k" in message


def test_wrong_architecture_names_expected_one(tmp_path, b32):
    tiny_ckpt = tmp_path / "tiny.bin"
    torch.save(_other_tiny_state_dict(), tiny_ckpt)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("quiltnet-b32", checkpoint=str(tiny_ckpt))
    message = _one_line_error(excinfo)
    assert "ViT-B-32" in message and "missing keys" in message and "unexpected keys" in message
    with pytest.raises(ModelError) as excinfo:
        load_encoder("tiny", checkpoint=str(b32[1]))
    message = _one_line_error(excinfo)
    assert "tiny" in message and "wrong shape" in message


def test_unreadable_checkpoint_is_one_line(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("tiny", checkpoint=str(junk))
    assert "cannot read checkpoint" in _one_line_error(excinfo)


def test_missing_optional_extras_say_what_to_install(monkeypatch, tmp_path):
    ckpt = tmp_path / "pytorch_model.bin"
    ckpt.write_bytes(b"x")
    for module in ("conch", "conch.open_clip_custom"):
        monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("conch", checkpoint=str(ckpt))
    assert "pip install 'slidesearch[conch]'" in _one_line_error(excinfo)
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("plip", checkpoint=str(tmp_path))
    assert "pip install 'slidesearch[plip]'" in _one_line_error(excinfo)


def test_cuda_refused_without_gpu():
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    with pytest.raises(DeviceError):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


# ---- registry ------------------------------------------------------------------------------------
def test_list_encoders_and_register():
    infos = {i.name: i for i in list_encoders()}
    assert {"tiny", "openclip:<arch>[@tag]", "quiltnet-b32", "quiltnet-b16", "conch", "plip"} <= set(infos)
    assert infos["tiny"].available and infos["tiny"].dim == 128
    assert "not semantically meaningful" in infos["tiny"].description.lower()
    assert all(i.how_to_obtain for i in infos.values())
    with pytest.raises(AttributeError):
        infos["tiny"].dim = 3  # frozen

    from indexer.models import encoders

    calls = []

    def factory(spec, *, checkpoint, device, batch_size):
        calls.append((spec, checkpoint, device, batch_size))
        return "built"

    register_encoder("unit-test:", factory, EncoderInfo("unit-test:<x>", 7, "test", True, "none"))
    try:
        assert load_encoder("unit-test:abc", device="cpu", batch_size=3) == "built"
        assert calls == [("abc", None, "cpu", 3)]
    finally:
        encoders._REGISTRY.pop("unit-test:")


# ---- CONCH (conch-fork) -----------------------------------------------------------------------
# Same CoCa class, config format and create_model_from_pretrained path as CONCH ViT-B/16, shrunk
# (the real one is 395 M parameters / 1.6 GB); the full-size run is test_conch_full_size below.
SMALL_CONCH = {
    "embed_dim": 32, "embed_dim_caption": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 16, "width": 32, "layers": 1, "num_heads": 2,
                   "attentional_pool_caption": True, "attentional_pool_contrast": True, "attn_pooler_heads": 2,
                   "n_queries_contrast": 1, "n_queries_caption": 4, "output_tokens": True},
    "text_cfg": {"context_length": 128, "vocab_size": 32007, "width": 32, "heads": 2, "layers": 1,
                 "embed_cls": True, "output_tokens": True},
    "multimodal_cfg": {"context_length": 128, "vocab_size": 32007, "width": 32, "heads": 2, "layers": 1},
    "custom_text": True,
}


def _save_conch(path, cfg) -> None:
    conch = pytest.importorskip("conch.open_clip_custom", reason="conch-fork (slidesearch[conch]) not installed")
    cfg = copy.deepcopy(cfg)
    cfg.pop("custom_text")
    torch.manual_seed(0)
    torch.save(conch.CoCa(**cfg).state_dict(), path)  # CONCH's pytorch_model.bin is a plain CoCa state dict


def test_conch_checkpoint_loads(tmp_path, monkeypatch):
    import indexer.models.backends as backends

    path = tmp_path / "pytorch_model.bin"
    _save_conch(path, SMALL_CONCH)
    monkeypatch.setattr(backends, "CONCH_CONFIG", SMALL_CONCH)
    enc = load_encoder("conch", checkpoint=str(path), device="cpu")
    assert (enc.dim, enc.image_size) == (32, 64)
    _assert_towers_work(enc, image_px=256)
    assert enc.weights_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    pickle.dumps(enc.preprocess)


def test_conch_wrong_checkpoint_names_conch(tmp_path):
    pytest.importorskip("conch.open_clip_custom", reason="conch-fork (slidesearch[conch]) not installed")
    path = tmp_path / "tiny.bin"
    torch.save(_other_tiny_state_dict(), path)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("conch", checkpoint=str(path))
    assert "CONCH ViT-B/16" in _one_line_error(excinfo)


@pytest.mark.skipif(os.environ.get("SLIDESEARCH_SLOW_TESTS") != "1", reason="full-size CONCH (1.6 GB, ~1 min): "
                    "set SLIDESEARCH_SLOW_TESTS=1")
def test_conch_full_size(tmp_path):
    from indexer.models.backends import CONCH_CONFIG

    pytest.importorskip("conch.open_clip_custom", reason="conch-fork not installed")
    from conch.open_clip_custom.factory import CFG_DIR

    path = tmp_path / "pytorch_model.bin"
    _save_conch(path, json.loads((CFG_DIR / f"{CONCH_CONFIG}.json").read_text()))
    enc = load_encoder("conch", checkpoint=str(path), device="cpu", batch_size=2)
    assert (enc.dim, enc.image_size) == (512, 448)
    _assert_unit_rows(enc.encode_images(_images(2, size=512)), 2, 512)
    _assert_unit_rows(enc.encode_text(["tumour"]), 1, 512)


# ---- PLIP (transformers CLIP folder) ---------------------------------------------------------
@pytest.fixture(scope="module")
def plip_folder(tmp_path_factory):
    transformers = pytest.importorskip("transformers", reason="transformers (slidesearch[plip]) not installed")
    import open_clip

    root = tmp_path_factory.mktemp("plip")
    bpe = open_clip.SimpleTokenizer()  # the CLIP BPE vocabulary, as in PLIP's tokenizer files
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    (root / "vocab.json").write_text(json.dumps({rename.get(k, k): v for k, v in bpe.encoder.items()}))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (root / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = transformers.CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"))
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    config = transformers.CLIPConfig(text_config=small, vision_config={**small, "image_size": 64, "patch_size": 16},
                                     projection_dim=24)
    torch.manual_seed(0)
    folder = root / "plip"
    transformers.utils.logging.disable_progress_bar()
    transformers.CLIPModel(config).save_pretrained(folder)
    image_processor = transformers.CLIPImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def test_plip_folder_loads(plip_folder):
    enc = load_encoder("plip", checkpoint=str(plip_folder), device="cpu")
    assert (enc.dim, enc.image_size) == (24, 64)
    _assert_towers_work(enc, image_px=200)
    assert pickle.loads(pickle.dumps(enc.preprocess))(_images(1, size=200)[0]).shape == (3, 64, 64)


def test_plip_wrong_folder_is_one_line(plip_folder, tmp_path):
    pytest.importorskip("transformers")
    config = json.loads((plip_folder / "config.json").read_text())
    config["projection_dim"] = 40  # weights no longer fit the architecture
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in plip_folder.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelError) as excinfo:
        load_encoder("plip", checkpoint=str(bad))
    assert "PLIP" in _one_line_error(excinfo)
    with pytest.raises(ModelError) as excinfo:
        load_encoder("plip", checkpoint=str(plip_folder / "config.json"))
    assert "folder" in _one_line_error(excinfo)
