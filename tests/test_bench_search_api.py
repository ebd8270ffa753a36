"""Tests for benchmarks/search.py (search API latency vs the FAISS searches inside it) on a 500-slide index."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks import search as search_benchmark
from indexer import vectors as vi
from indexer.vectors import exact, knn, recall
from indexer.store import rerank
from retrieval.search import SlideSearcher

ROW_FIELDS = {"n_slides", "n_patches", "variant", "type", "where", "queries", "faiss_calls", "consistent",
              "api_p50_ms", "api_p99_ms", "search_p50_ms", "search_p99_ms", "raw_p50_ms", "raw_p99_ms",
              "main_p50_ms", "inside_p50_ms", "api_over_search", "api_over_raw", "api_over_inside", "raw_ms_by_call"}


@pytest.fixture(scope="module")
def bench():
    return search_benchmark


@pytest.fixture(scope="module")
def run(bench, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bench_api")
    argv = ["--sizes", "500", "--queries", "6", "--warmup", "2", "--flat-at", "500", "--flat-queries", "4",
            "--encoder", "none", "--keep", str(tmp / "indexes"), "--out", str(tmp / "out")]
    return bench.main(argv), tmp


def test_report_files_and_fields(run):
    result, tmp = run
    saved = json.loads((tmp / "out" / "bench_search_api.json").read_text())
    assert saved["results"] == json.loads(json.dumps(result["results"]))
    assert {"config", "machine", "load_avg_1min", "indexes", "results", "command"} <= set(saved)
    assert set(saved["indexes"]) == {"500/auto", "500/flat"}
    assert not any(e["reused"] for e in saved["indexes"].values())  # the --keep folder was empty
    rows = saved["results"]
    assert len(rows) == 2 * 3 * 2  # variants × query types × (unfiltered, filtered)
    assert {(r["variant"], r["type"], r["where"] is None) for r in rows} == {
        (v, t, f) for v in ("auto", "flat") for t in ("text", "slide", "patch") for f in (True, False)}
    for r in rows:
        assert ROW_FIELDS <= set(r)
        assert r["n_slides"] == 500 and r["n_patches"] == 5000
        assert r["queries"] == (6 if r["variant"] == "auto" else 4)
        assert r["consistent"] == 1.0, r  # hits come from the FAISS results the API searched
        assert r["api_p99_ms"] >= r["api_p50_ms"] > 0 and r["raw_p50_ms"] > 0
        assert r["api_over_raw"] == pytest.approx(r["api_p50_ms"] / r["raw_p50_ms"])
        assert 0 < r["inside_p50_ms"] <= r["api_p50_ms"]  # the searches inside the API call take part of it
    calls = {r["type"]: r["faiss_calls"] for r in rows if r["where"] is None}
    assert calls["text"] == 2 and calls["patch"] == 1  # sub-vectors + patches; patches
    assert calls["slide"] == 1  # the slides search; explanations reconstruct all hits' vectors at once
    markdown = (tmp / "out" / "bench_search_api.md").read_text()
    assert "| 500 | auto | 1 | slide | `label = 'c3'` |" in markdown and "--sizes 500" in markdown


def test_synthetic_index_follows_the_contract(bench, run):
    _, tmp = run
    searcher = SlideSearcher(tmp / "indexes" / "n500_d128_k8_p10_s0_auto")
    slides = searcher.catalog.slides
    assert slides.num_rows == 500 and {"label", "patient_id", "stain"} <= set(slides.column_names)
    in_c3 = [r for r, label in zip(slides["slide_row"].to_pylist(), slides["label"].to_pylist()) if label == "c3"]
    assert searcher.catalog.allowed_slide_rows(bench.WHERE).tolist() == in_c3 and 0 < len(in_c3) < 500
    arrays = searcher.arrays
    assert np.allclose(arrays.mass.sum(axis=1), 1.0, atol=1e-5)
    vectors = arrays.slide_vectors(searcher.catalog, np.arange(500), "slides")
    assert vectors.shape == (500, 8 * 128) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    assert searcher.catalog.faiss("patches").ntotal == 5000 == len(arrays.patch_slide)


def test_slide_query_returns_the_faiss_ids_the_benchmark_times(bench, run):
    _, tmp = run
    searcher = SlideSearcher(tmp / "indexes" / "n500_d128_k8_p10_s0_auto", encoder=bench.VectorEncoder())
    row = searcher.arrays.row_of("S000042")
    with bench.recorded_searches() as calls:
        result = searcher.search_slide("S000042", 10)
    index, queries, k, allowed, ids, seconds = calls[0]
    assert index is searcher.catalog.faiss("slides") and k == 10 and allowed is None and seconds > 0
    own = searcher.arrays.slide_vector(searcher.catalog, row, "slides")
    _, expected = vi.search(index, own, 10)
    assert [h.slide_row for h in result.hits] == ids[0].tolist() == expected[0].tolist()
    assert result.hits[0].slide_row == row  # a slide is its own nearest neighbour
    scores, raw_ids = bench.raw_faiss_call(index, queries, k, allowed)()
    assert raw_ids[0].tolist() == expected[0].tolist()


def _pq_index(n=4000, d=32, seed=0):
    """An IVF-PQ index with its exact re-rank (what the store opens for compressed segments), and its vectors."""
    from indexer.vectors.exact import row_gather
    from indexer.store.rerank import RerankedIndex

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((40, d))
    x = centres[rng.integers(40, size=n)] + 0.6 * rng.standard_normal((n, d))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(n, dtype=np.int64)
    inner = vi.build_index(x, ids, vi.choice_for_kind("ivf_pq", n, d, m=4))
    return RerankedIndex(inner, row_gather(x, ids), pool=64), x


def test_bare_faiss_calls_run_no_project_code(bench, run, monkeypatch):
    """Every bare closure still runs when the project's search, reconstruction and re-rank code is made to fail:
    it is FAISS alone (a small allowed set included, which the API scores exactly in NumPy)."""
    _, tmp = run
    searcher = SlideSearcher(tmp / "indexes" / "n500_d128_k8_p10_s0_auto", encoder=bench.VectorEncoder())
    slides, patches = searcher.catalog.faiss("slides"), searcher.catalog.faiss("patches")
    query = searcher.arrays.slide_vector(searcher.catalog, 7, "slides")
    small = searcher.catalog.allowed_slide_rows(bench.WHERE)
    reranked, x = _pq_index()
    segmented = vi.SegmentedIndex([vi.build_index(x[:2000], np.arange(2000), vi.IndexChoice("flat")),
                                   vi.build_index(x[2000:], np.arange(2000, 4000), vi.IndexChoice("hnsw"))], [0, 2000])
    closures = [bench.raw_faiss_call(slides, query, 5, small), bench.raw_faiss_call(slides, query, 5, None),
                bench.raw_faiss_call(patches, np.tile(x[:1, :1], (1, 128)) * 0 + 1 / np.sqrt(128), 5, np.arange(30)),
                bench.raw_faiss_call(reranked, x[:3], 10, None), bench.raw_faiss_call(reranked, x[:3], 10, np.arange(500)),
                bench.raw_faiss_call(segmented, x[:3], 10, np.arange(0, 4000, 7))]

    def forbidden(*args, **kwargs):
        raise AssertionError("project code ran inside a bare FAISS call")

    for module in (vi, knn, recall, exact):
        for name in ("search", "reconstruct", "exact_topk", "row_gather"):
            if hasattr(module, name):
                monkeypatch.setattr(module, name, forbidden)
    monkeypatch.setattr(rerank, "search_index", forbidden)  # the re-rank's own import of vectors.search
    monkeypatch.setattr(type(reranked), "search", forbidden)
    reranked.gather = reranked.score = forbidden
    for call in closures:
        call()


def test_the_baseline_can_differ_from_the_api(bench):
    """On a compressed index the API returns exactly re-ranked hits; bare FAISS returns the candidate pool in PQ
    order with PQ scores (the old baseline timed the re-rank itself, so API and bare always agreed)."""
    reranked, x = _pq_index()
    q = x[::97] + 0.05
    q = (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)
    api_scores, api_ids = vi.search(reranked, q, 10)
    bare_scores, bare_ids = bench.raw_faiss_call(reranked, q, 10, None)()
    assert bare_ids.shape == (len(q), 64)  # the pool the re-rank starts from
    exact = np.einsum("qd,qkd->qk", q, x[api_ids])
    np.testing.assert_allclose(api_scores, exact, atol=1e-5)
    assert np.abs(bare_scores[:, :10] - np.einsum("qd,qkd->qk", q, x[bare_ids[:, :10]])).max() > 1e-3  # PQ scores
    assert (bare_ids[:, :10] != api_ids).any(axis=1).mean() > 0.5  # the re-rank reorders most queries' top 10


def test_kept_indexes_are_reused_and_reported_so(bench, run):
    _, tmp = run
    before = (tmp / "indexes" / "n500_d128_k8_p10_s0_auto" / "CURRENT").read_text()
    again = bench.main(["--sizes", "500", "--queries", "2", "--warmup", "1", "--flat-at", "", "--encoder", "none",
                        "--keep", str(tmp / "indexes"), "--out", str(tmp / "again")])
    assert again["indexes"]["500/auto"]["reused"] is True
    assert (tmp / "indexes" / "n500_d128_k8_p10_s0_auto" / "CURRENT").read_text() == before
    markdown = (tmp / "again" / "bench_search_api.md").read_text()
    assert "| reused (--keep) |" in markdown and "written at commit" in markdown  # loud: which code wrote them
    assert again["provenance"]["commit"] in markdown


def test_every_hit_of_every_query_kind_is_explained(bench, run):
    """Sparse slides (10 patches, 8 prototypes) often lack a searched patch or a patch of their best prototype:
    each hit still names prototypes and shows patches."""
    _, tmp = run
    searcher = SlideSearcher(tmp / "indexes" / "n500_d128_k8_p10_s0_auto", encoder=bench.VectorEncoder())
    queries = bench.make_queries(searcher, 30, seed=3)
    results = [searcher.search_text_vector(q, 10) for q in queries["text"]]
    results += [searcher.search_slide(s, 10) for s in queries["slide"]]
    results += [searcher.search_patch(q, 10) for q in queries["patch"]]
    hits = [h for r in results for h in r.hits]
    assert len(hits) == 3 * 30 * 10
    assert all(h.prototypes and h.patches for h in hits)
    for h in hits:
        own = searcher.arrays.patch_rows_of(np.array([h.slide_row])).tolist()
        assert {p.patch_row for p in h.patches} <= set(own)  # shown patches belong to the hit
