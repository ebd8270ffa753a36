"""Prototype embeddings: prompt ensembling over descriptions and collection-level refinement."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from indexer.aggregation.aggregate import l2_normalize
from indexer.aggregation.bank import Bank, Prototype, load_bank
from indexer.aggregation.prototypes import embed_prototypes, refine_prototypes

D = 32


class HashTextEncoder:
    """Deterministic fake text tower: text → sha256 seed → Gaussian vector (scaled, not unit)."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        return np.random.default_rng(seed).standard_normal(D).astype(np.float32) * 3.0

    def encode_text(self, texts: list[str]) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts])


def test_prototype_is_normalised_mean_of_normalised_description_embeddings():
    bank, encoder = load_bank("lung"), HashTextEncoder()
    T = embed_prototypes(bank, encoder)
    assert T.shape == (len(bank.prototypes), D) and T.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1.0, atol=1e-5)
    assert len(encoder.calls) == 1  # one batched call for all descriptions
    for k, proto in enumerate(bank.prototypes):
        expected = l2_normalize(np.mean([l2_normalize(encoder.vector(t)) for t in proto.descriptions], axis=0))
        np.testing.assert_allclose(T[k], expected, atol=1e-5)


def test_rows_follow_prototype_order():
    protos = load_bank("general").prototypes[:5]
    forward = Bank(name="a", prototypes=protos, diseases=(), sha256="")
    backward = Bank(name="b", prototypes=protos[::-1], diseases=(), sha256="")
    np.testing.assert_allclose(embed_prototypes(forward, HashTextEncoder())[::-1],
                               embed_prototypes(backward, HashTextEncoder()), atol=1e-6)


def test_bad_encoder_output_raises():
    class Short(HashTextEncoder):
        def encode_text(self, texts):
            return super().encode_text(texts)[:-1]

    with pytest.raises(ValueError, match="encode_text returned"):
        embed_prototypes(load_bank("general"), Short())


def test_real_open_clip_text_tower_embeds_every_shipped_description():
    open_clip = pytest.importorskip("open_clip")
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=D, vision_cfg={"layers": 1, "width": 32, "head_width": 16, "patch_size": 16, "image_size": 32},
        text_cfg={"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    ).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")

    class TinyClip:
        def encode_text(self, texts):
            with torch.inference_mode():
                return torch.nn.functional.normalize(model.encode_text(tokenizer(texts)), dim=-1).numpy()

    T = embed_prototypes(load_bank("skin"), TinyClip())
    assert np.isfinite(T).all()
    np.testing.assert_allclose(np.linalg.norm(T, axis=1), 1.0, atol=1e-5)
    assert len(np.unique(T.round(5), axis=0)) == len(T)


def _modality_gap(seed: int = 0):
    """Text prototypes T and image patches clustered around V_k = normalize(T_k + shared gap)."""
    rng = np.random.default_rng(seed)
    T = l2_normalize(rng.standard_normal((4, D)))
    V = l2_normalize(T + 0.6 * l2_normalize(rng.standard_normal(D)))
    labels = np.repeat([0, 1, 2], [300, 200, 100])  # prototype 3 gets no patch
    X = l2_normalize(V[labels] + 0.5 * rng.standard_normal((len(labels), D)) / np.sqrt(D))
    return T, V, X


def test_refinement_moves_prototypes_towards_their_patches():
    T, V, X = _modality_gap()
    np.testing.assert_allclose(refine_prototypes(T, X, alpha=1.0, tau=0.05), T, atol=1e-6)
    half = refine_prototypes(T, X, alpha=0.5, tau=0.05)
    image_only = refine_prototypes(T, X, alpha=0.0, tau=0.05)
    for k in range(3):
        assert T[k] @ V[k] < half[k] @ V[k] < image_only[k] @ V[k]
        assert image_only[k] @ V[k] > 0.99
    np.testing.assert_array_equal(half[3], T[3])  # no assigned patch: keeps the text embedding
    np.testing.assert_allclose(np.linalg.norm(half, axis=1), 1.0, atol=1e-5)


def test_refinement_matches_formula_and_is_chunk_invariant():
    T, _, X = _modality_gap(seed=1)
    labels = (X @ T.T).argmax(axis=1)
    alpha = 0.3
    expected = np.array([l2_normalize(alpha * T[k] + (1 - alpha) * X[labels == k].mean(axis=0))
                         if (labels == k).any() else T[k] for k in range(len(T))])
    np.testing.assert_allclose(refine_prototypes(T, X, alpha, 0.05), expected, atol=1e-5)
    np.testing.assert_allclose(refine_prototypes(T, X.astype(np.float16), alpha, 0.05, chunk=7),
                               expected, atol=2e-3)
    with pytest.raises(ValueError):
        refine_prototypes(T, X, alpha=1.2, tau=0.05)
    with pytest.raises(ValueError):
        refine_prototypes(T, X, alpha=0.5, tau=0.0)


def test_bank_dataclasses_are_frozen():
    proto = Prototype(name="x", organs=("any",), descriptions=("a", "b", "c"))
    with pytest.raises(AttributeError):
        proto.name = "y"  # type: ignore[misc]
