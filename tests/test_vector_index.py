"""Tests for indexer.vectors: choice rule, explicit ids, exact and filtered search, persistence, removal."""

from __future__ import annotations

import itertools

import faiss
import numpy as np
import pytest

from indexer import vectors as vi
from indexer.vectors import knn
from indexer.errors import IndexError_, QueryError

N, D = 6000, 32
RANK = {"ivf_pq": 0, "ivf_flat": 1, "hnsw": 2, "flat": 3}  # least to most resources per vector
CHOICES = {
    "flat": vi.IndexChoice("flat"),
    "ivf_flat": vi.IndexChoice("ivf_flat", nlist=64, nprobe=8),
    "hnsw": vi.IndexChoice("hnsw", hnsw_m=16, ef_search=64),
    "ivf_pq": vi.IndexChoice("ivf_pq", nlist=32, m=8, nbits=8, nprobe=8),
}


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def data():
    """Clustered unit vectors with sparse, shuffled int64 ids (so ids never equal row order)."""
    rng = np.random.default_rng(7)
    centres = rng.standard_normal((40, D))
    x = _unit(centres[rng.integers(0, 40, N)] + 0.6 * rng.standard_normal((N, D)))
    ids = rng.choice(10**12, N, replace=False).astype(np.int64)
    return x, ids


@pytest.fixture(scope="module")
def indexes(data):
    x, ids = data
    return {kind: vi.build_index(x, ids, choice, use_gpu=False) for kind, choice in CHOICES.items()}


def _brute(x, ids, q, k, allowed=None):
    scores = q @ x.T
    if allowed is not None:
        scores[:, ~np.isin(ids, allowed)] = -np.inf
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    top = np.take_along_axis(scores, order, 1)
    return top, np.where(np.isfinite(top), ids[order], -1)  # fewer allowed than k: id -1, score -inf


def _overlap(found, expected):
    return np.mean([len(np.intersect1d(f[f >= 0], e)) / len(e) for f, e in zip(found, expected)])


def test_choose_index_is_monotone_in_count_and_budget():
    counts = [10, 1_000, 50_000, 50_001, 200_000, 200_001, 10**6, 10**7]
    budgets = [2**20, 2**26, 2**30, 2**32, 2**36]
    table = np.array([[_rank(n, 512, b) for b in budgets] for n in counts])
    assert (np.diff(table, axis=0) <= 0).all(), table  # more vectors: never a less compressed kind
    assert (np.diff(table, axis=1) >= 0).all(), table  # more memory: never a more compressed kind
    assert len(np.unique(table)) == 5  # every kind (and "does not fit") occurs in this grid
    assert vi.choose_index(1000, 64) == vi.choose_index(1000, 64)


def _rank(n, d, budget):
    try:
        return RANK[vi.choose_index(n, d, budget).kind]
    except IndexError_:
        return -1


def _fits(n, d, budget):
    return _rank(n, d, budget) >= 0


@pytest.mark.parametrize(
    "count,dim,budget", list(itertools.product([20_000, 300_000, 3 * 10**6], [96, 512, 8192], [2**28, 2**31])))
def test_choose_index_respects_budget_and_shapes(count, dim, budget):
    if not _fits(count, dim, budget):
        with pytest.raises(IndexError_):
            vi.choose_index(count, dim, budget)
        return
    choice = vi.choose_index(count, dim, budget)
    assert vi.estimated_bytes(choice.kind, count, dim, m=choice.m, hnsw_m=choice.hnsw_m) <= budget
    if choice.kind.startswith("ivf"):
        assert 1 <= choice.nprobe <= choice.nlist <= count // vi.MIN_POINTS_PER_CENTROID
        assert choice.nlist == min(round(4 * np.sqrt(count)), count // vi.MIN_POINTS_PER_CENTROID)
    if choice.kind == "ivf_pq":
        assert dim % choice.m == 0 and 2**choice.nbits <= count
    if choice.kind == "flat":
        assert count <= vi.FLAT_MAX_COUNT


def test_choose_index_small_collections_are_exact_and_tiny_budget_raises():
    assert vi.choose_index(0, 512).kind == "flat"
    assert vi.choose_index(50_000, 512).kind == "flat"
    with pytest.raises(IndexError_):
        vi.choose_index(10**6, 512, memory_budget_bytes=10**6)


@pytest.mark.parametrize("kind", list(CHOICES))
def test_each_kind_returns_explicit_ids(kind, data, indexes):
    x, ids = data
    index = indexes[kind]
    assert index.ntotal == N
    _, found = vi.search(index, x[:300], 5)
    assert np.isin(found, ids).all()
    self_hit = np.mean(found[:, 0] == ids[:300])
    assert self_hit >= (0.5 if kind == "ivf_pq" else 0.95)
    assert vi.measure_recall(index, x, ids, k=10, n_queries=100) >= (0.4 if kind == "ivf_pq" else 0.9)


def test_flat_equals_brute_force(data, indexes):
    x, ids = data
    q = x[::97]
    scores, found = vi.search(indexes["flat"], q, 10)
    ref_scores, ref_ids = _brute(x, ids, q, 10)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    assert vi.measure_recall(indexes["flat"], x, ids) == 1.0


@pytest.mark.parametrize("n_allowed", [5, 700, 5000])
@pytest.mark.parametrize("exact_floats", [vi.EXACT_FILTER_FLOATS, 0])  # small-set exact path, FAISS's id selector
def test_filtered_flat_equals_restricted_brute_force(data, indexes, n_allowed, exact_floats, monkeypatch):
    monkeypatch.setattr(knn, "EXACT_FILTER_FLOATS", exact_floats)
    x, ids = data
    allowed = np.random.default_rng(1).choice(ids, n_allowed, replace=False)
    scores, found = vi.search(indexes["flat"], x[:50], 10, allowed_ids=allowed)
    ref_scores, ref_ids = _brute(x, ids, x[:50], 10, allowed)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)


@pytest.mark.parametrize("kind", ["flat", "ivf_flat"])
def test_filtered_search_over_dense_row_ids_uses_a_bitmap_and_stays_exact(data, kind, monkeypatch):
    monkeypatch.setattr(knn, "EXACT_FILTER_FLOATS", 0)
    x, _ = data
    rows = np.arange(len(x), dtype=np.int64)  # index rows, as slidesearch stores them
    index = vi.build_index(x, rows, vi.choice_for_kind(kind, len(x), x.shape[1]), use_gpu=False)
    allowed = np.random.default_rng(2).choice(rows, len(x) // 2, replace=False)
    import faiss

    assert isinstance(vi.id_selector(np.sort(allowed)), faiss.IDSelectorBitmap)
    _, found = vi.search(index, x[:30], 10, allowed_ids=np.concatenate([allowed[::-1], allowed[:5]]))
    assert np.isin(found, allowed).all()  # order and duplicates of the allowed ids do not matter
    if kind == "flat":
        np.testing.assert_array_equal(found, _brute(x, rows, x[:30], 10, allowed)[1])


@pytest.mark.parametrize("kind,n_allowed", list(itertools.product(["ivf_flat", "hnsw", "ivf_pq"], [30, 1500])))
def test_filtered_approximate_search_stays_inside_the_allowed_set(kind, n_allowed, data, indexes):
    x, ids = data
    allowed = np.random.default_rng(n_allowed).choice(ids, n_allowed, replace=False)
    _, found = vi.search(indexes[kind], x[:100], 10, allowed_ids=allowed)
    assert np.isin(found[found >= 0], allowed).all()
    _, ref_ids = _brute(x, ids, x[:100], 10, allowed)
    assert _overlap(found, ref_ids) >= (0.4 if kind == "ivf_pq" else 0.85)
    assert (found >= 0).mean() >= 0.95  # nprobe / efSearch widen with the filter's selectivity


def test_overfetch_fallback_equals_restricted_brute_force(data, indexes, monkeypatch):
    x, ids = data
    monkeypatch.setattr(knn, "filter_params", lambda index, allowed: None)
    allowed = np.random.default_rng(3).choice(ids, 40, replace=False)
    scores, found = vi.search(indexes["flat"], x[:20], 10, allowed_ids=allowed)
    ref_scores, ref_ids = _brute(x, ids, x[:20], 10, allowed)
    np.testing.assert_array_equal(found, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-5)
    _, few = vi.search(indexes["flat"], x[:2], 10, allowed_ids=allowed[:3])
    assert (few[:, :3] >= 0).all() and (few[:, 3:] == -1).all()


def test_empty_unknown_and_oversized_requests(data, indexes):
    x, ids = data
    scores, found = vi.search(indexes["flat"], x[:3], 5, allowed_ids=np.array([], dtype=np.int64))
    assert found.shape == (3, 5) and (found == -1).all() and np.isneginf(scores).all()
    _, found = vi.search(indexes["hnsw"], x[:2], 5, allowed_ids=[-7, 123])  # ids not in the index
    assert (found == -1).all()
    small = vi.build_index(x[:4], ids[:4], CHOICES["flat"])
    scores, found = vi.search(small, x[0], 10)
    assert found.shape == (1, 10) and set(found[0, :4]) == set(ids[:4]) and (found[0, 4:] == -1).all()
    assert np.isneginf(scores[0, 4:]).all() and np.isfinite(scores[0, :4]).all()
    with pytest.raises(QueryError):
        vi.search(small, np.ones((1, D + 1), np.float32), 3)
    with pytest.raises(QueryError):
        vi.search(small, x[:1], 0)


@pytest.mark.parametrize("kind", list(CHOICES))
def test_save_load_round_trip_keeps_ids_results_and_settings(kind, data, indexes, tmp_path):
    x, _ = data
    path = tmp_path / f"{kind}.faiss"
    vi.save_index(indexes[kind], path)
    loaded = vi.load_index(path)
    before, after = vi.search(indexes[kind], x[:40], 10), vi.search(loaded, x[:40], 10)
    np.testing.assert_array_equal(before[1], after[1])
    np.testing.assert_allclose(before[0], after[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]
    assert vi.index_nbytes(loaded) == path.stat().st_size
    if kind.startswith("ivf"):
        assert faiss.downcast_index(loaded).nprobe == CHOICES[kind].nprobe
    if kind == "hnsw":
        assert faiss.downcast_index(loaded.index).hnsw.efSearch == CHOICES[kind].ef_search


def test_failed_save_keeps_the_old_file_and_leaves_no_temp(data, indexes, tmp_path, monkeypatch):
    path = tmp_path / "slides.faiss"
    vi.save_index(indexes["flat"], path)
    old = path.read_bytes()

    def broken_write(message):
        def write(index, writer):
            raise RuntimeError(message)
        return write

    monkeypatch.setattr(faiss, "write_index", broken_write("something else"))
    with pytest.raises(RuntimeError, match="something else"):
        vi.save_index(indexes["ivf_flat"], path)
    full = "Error in faiss::write_index: write error in x: 4 != 8 (No space left on device)"
    monkeypatch.setattr(faiss, "write_index", broken_write(full))
    with pytest.raises(OSError, match="No space left on device"):  # the CLI's one line, not a traceback
        vi.save_index(indexes["ivf_flat"], path)
    assert path.read_bytes() == old and [p.name for p in tmp_path.iterdir()] == ["slides.faiss"]


def test_load_index_errors_are_one_line(tmp_path):
    with pytest.raises(IndexError_, match="no FAISS index"):
        vi.load_index(tmp_path / "missing.faiss")
    bad = tmp_path / "bad.faiss"
    bad.write_bytes(b"not an index")
    with pytest.raises(IndexError_) as err:
        vi.load_index(bad)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("kind", ["flat", "ivf_flat", "ivf_pq"])
def test_remove_ids(kind, data):
    x, ids = data
    index = vi.build_index(x[:2000], ids[:2000], CHOICES[kind])
    gone = ids[:100]
    assert vi.remove_ids(index, np.append(gone, -5)) == 100
    assert index.ntotal == 1900
    _, found = vi.search(index, x[:100], 10)
    assert not np.isin(found, gone).any()


def test_hnsw_removal_is_a_user_error(indexes, data):
    with pytest.raises(IndexError_, match="rebuild"):
        vi.remove_ids(indexes["hnsw"], data[1][:3])


def test_build_rejects_bad_input(data):
    x, ids = data
    with pytest.raises(IndexError_, match="normalised"):
        vi.build_index(x[:10] * 2, ids[:10], CHOICES["flat"])
    with pytest.raises(IndexError_, match="distinct"):
        vi.build_index(x[:10], np.zeros(10, np.int64), CHOICES["flat"])
    with pytest.raises(IndexError_, match="distinct"):
        vi.build_index(x[:10], ids[:9], CHOICES["flat"])
    with pytest.raises(IndexError_, match="nlist"):
        vi.build_index(x[:10], ids[:10], CHOICES["ivf_flat"])


def test_index_memory_reflects_compression(indexes):
    flat, pq = vi.index_nbytes(indexes["flat"]), vi.index_nbytes(indexes["ivf_pq"])
    assert flat >= N * D * 4 and pq < flat / 2
