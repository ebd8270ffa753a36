"""ProAlign aggregation: oracle tests on planted data (known prototypes and proportions)."""

from __future__ import annotations

import numpy as np
import pytest

from indexer.aggregation.aggregate import AggregationConfig, aggregate_slide, l2_normalize

D = 64
MASS_TOLERANCE = 0.01  # |π_k − planted proportion| for 3,000 patches, noise σ = 1 around unit prototypes


def prototypes(k: int, seed: int = 0) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((k, D)))


def planted(P: np.ndarray, proportions, n: int, seed: int, noise: float = 1.0):
    """Patches x = normalize(P_label + noise·g), g ~ N(0, I/d), with exact label counts."""
    rng = np.random.default_rng(seed)
    counts = np.round(np.asarray(proportions) * n).astype(int)
    labels = rng.permutation(np.repeat(np.arange(len(P)), counts))
    X = l2_normalize(P[labels] + noise * rng.standard_normal((len(labels), D)) / np.sqrt(D))
    return X, labels


def test_masses_recover_planted_proportions():
    P = prototypes(6)
    truth = np.array([0.4, 0.25, 0.15, 0.1, 0.1, 0.0])
    X, labels = planted(P, truth, 3000, seed=1)
    emb = aggregate_slide(X, P)
    assert emb.mass.shape == (6,) and emb.mass.sum() == pytest.approx(1.0, abs=1e-5)
    np.testing.assert_allclose(emb.mass, truth, atol=MASS_TOLERANCE)
    np.testing.assert_array_equal(emb.patch_proto, labels)
    np.testing.assert_allclose(emb.patch_proto_sim, np.einsum("nd,nd->n", X, P[labels]), atol=1e-5)
    assert emb.max_mass == pytest.approx(0.4, abs=MASS_TOLERANCE)
    present = truth[truth > 0]
    assert emb.entropy == pytest.approx(-(present * np.log(present)).sum() / np.log(6), abs=0.02)
    assert not emb.empty and emb.n_patches == 3000


def test_each_subvector_is_closest_to_its_own_prototype():
    P = prototypes(5)
    truth = [0.3, 0.3, 0.2, 0.1, 0.1]
    emb = aggregate_slide(planted(P, truth, 2000, seed=2)[0], P)
    similarity = emb.subvectors @ P.T
    np.testing.assert_array_equal(similarity.argmax(axis=1), np.arange(5))
    assert np.diag(similarity).min() > 0.9
    np.testing.assert_allclose(np.linalg.norm(emb.subvectors, axis=1), 1.0, atol=1e-5)


def test_slide_similarity_orders_slides_by_composition():
    P = prototypes(4)
    query = np.array([0.7, 0.2, 0.1, 0.0])
    candidates = np.array([[0.6, 0.25, 0.15, 0.0], [0.4, 0.3, 0.2, 0.1],
                           [0.2, 0.2, 0.2, 0.4], [0.0, 0.1, 0.2, 0.7]])
    q = aggregate_slide(planted(P, query, 2000, seed=10)[0], P)
    embs = [aggregate_slide(planted(P, c, 2000, seed=11 + i)[0], P) for i, c in enumerate(candidates)]
    slide_sims = np.array([q.slide_vector @ e.slide_vector for e in embs])
    formula = np.array([np.sum(np.sqrt(q.mass * e.mass) * np.einsum("kd,kd->k", q.subvectors, e.subvectors))
                        for e in embs])
    np.testing.assert_allclose(slide_sims, formula, atol=1e-5)       # ⟨s,s'⟩ = Σ √(π π') cos(ẑ, ẑ')
    bhattacharyya = np.sqrt(query * candidates).sum(axis=1)          # planted composition overlap
    np.testing.assert_array_equal(np.argsort(-slide_sims), np.argsort(-bhattacharyya))
    np.testing.assert_allclose(slide_sims, bhattacharyya, atol=0.05)


def test_results_are_invariant_to_patch_order():
    P = prototypes(4)
    X, _ = planted(P, [0.5, 0.3, 0.2, 0.0], 1500, seed=3)
    order = np.random.default_rng(4).permutation(len(X))
    a, b = aggregate_slide(X, P, AggregationConfig(chunk=256)), aggregate_slide(X[order], P, AggregationConfig(chunk=256))
    for field in ("slide_vector", "subvectors", "mass", "mean_vector"):
        np.testing.assert_allclose(getattr(a, field), getattr(b, field), atol=1e-5)
    np.testing.assert_array_equal(a.patch_proto[order], b.patch_proto)
    assert a.entropy == pytest.approx(b.entropy, abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 500])
def test_chunked_equals_unchunked(chunk):
    P = prototypes(3)
    X, _ = planted(P, [0.6, 0.3, 0.1], 1000, seed=5, noise=3.0)
    whole = aggregate_slide(X, P, AggregationConfig(chunk=10**6))
    part = aggregate_slide(X, P, AggregationConfig(chunk=chunk))
    for field in ("slide_vector", "subvectors", "mass", "mean_vector", "patch_proto_sim"):
        np.testing.assert_allclose(getattr(whole, field), getattr(part, field), atol=1e-5)
    np.testing.assert_array_equal(whole.patch_proto, part.patch_proto)


def test_float16_input_matches_float32():
    P = prototypes(3)
    X, _ = planted(P, [0.5, 0.3, 0.2], 600, seed=6)
    a, b = aggregate_slide(X, P), aggregate_slide(X.astype(np.float16), P, AggregationConfig(chunk=100))
    np.testing.assert_allclose(a.slide_vector, b.slide_vector, atol=2e-3)
    np.testing.assert_allclose(a.mass, b.mass, atol=2e-3)


def test_mean_vector_is_normalised_mean_pool():
    P = prototypes(3)
    X, _ = planted(P, [0.5, 0.3, 0.2], 500, seed=7)
    emb = aggregate_slide(X, P, AggregationConfig(chunk=64))
    np.testing.assert_allclose(emb.mean_vector, l2_normalize(X.mean(axis=0)), atol=1e-5)


def test_one_patch():
    P = prototypes(4)
    x = l2_normalize(P[2] + 0.3 * np.random.default_rng(8).standard_normal(D))[None]
    emb = aggregate_slide(x, P)
    logits = (x @ P.T)[0] / 0.05
    np.testing.assert_allclose(emb.mass, np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum(), atol=1e-5)
    np.testing.assert_allclose(emb.subvectors, np.repeat(x, 4, axis=0), atol=1e-5)  # attention over one patch
    assert emb.patch_proto.tolist() == [2] and emb.n_patches == 1 and not emb.empty
    assert np.linalg.norm(emb.slide_vector) == pytest.approx(1.0, abs=1e-5)
    assert 0.0 <= emb.entropy <= 1.0


def test_zero_patches_give_explicit_empty_state():
    P = prototypes(4)
    emb = aggregate_slide(np.zeros((0, D), np.float16), P)
    assert emb.empty and emb.n_patches == 0 and emb.entropy == 0.0 and emb.max_mass == 0.0
    assert emb.slide_vector.shape == (4 * D,) and emb.subvectors.shape == (4, D)
    assert emb.mass.shape == (4,) and emb.mean_vector.shape == (D,)
    assert emb.patch_proto.shape == (0,) and emb.patch_proto_sim.shape == (0,)
    for array in (emb.slide_vector, emb.subvectors, emb.mass, emb.mean_vector):
        assert np.isfinite(array).all() and not array.any()


def test_collapse_and_spread_diagnostics():
    P = prototypes(4)
    collapsed = aggregate_slide(planted(P, [1.0, 0, 0, 0], 400, seed=9)[0], P)
    spread = aggregate_slide(planted(P, [0.25] * 4, 400, seed=9)[0], P)
    assert collapsed.max_mass > 0.98 and collapsed.entropy < 0.05
    assert spread.max_mass < 0.27 and spread.entropy > 0.98


def test_extreme_temperature_stays_finite_and_hard():
    P = prototypes(3)
    X, labels = planted(P, [0.5, 0.3, 0.2], 300, seed=12)
    emb = aggregate_slide(X, P, AggregationConfig(tau=1e-4, chunk=50))
    assert all(np.isfinite(a).all() for a in (emb.slide_vector, emb.subvectors, emb.mass))
    np.testing.assert_allclose(emb.mass, np.bincount(labels) / len(labels), atol=1e-6)


def test_bad_inputs_raise():
    P = prototypes(3)
    X, _ = planted(P, [0.5, 0.5, 0.0], 10, seed=13)
    with pytest.raises(ValueError, match="same d"):
        aggregate_slide(X[:, :10], P)
    X[3, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        aggregate_slide(X, P)
    for bad in ({"tau": 0.0}, {"alpha": 1.5}, {"chunk": 0}):
        with pytest.raises(ValueError):
            AggregationConfig(**bad)
