"""Tests for benchmarks/search_faiss.py (`python -m benchmarks.search_faiss`) on a tiny synthetic run."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from benchmarks.search_faiss import SearchBenchConfig, app, run_search_benchmark, synthetic_embeddings

ROW_FIELDS = {"n", "dim", "kind", "device", "index", "param", "value", "default", "build_s", "index_bytes",
              "qps", "p50_ms", "p99_ms", "recall_at_k"}


def test_tiny_run_writes_json_markdown_and_png(tmp_path):
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, ["--out", str(out), "--sizes", "2000", "--dim", "32",
                                      "--queries", "50", "--latency-queries", "20", "--seconds-per-point", "0.02",
                                      "--no-gpu"])
    assert result.exit_code == 0, result.output
    paths = {ext: out / f"bench_search.{ext}" for ext in ("json", "md", "png")}
    assert all(p.is_file() and p.stat().st_size > 0 for p in paths.values())
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = json.loads(paths["json"].read_text())
    assert {"config", "machine", "results", "skipped", "command"} <= set(report)
    rows = report["results"]
    assert {r["kind"] for r in rows} == {"flat", "ivf_flat", "hnsw", "ivf_pq"}
    assert all(ROW_FIELDS <= set(r) for r in rows)
    assert all(r["n"] == 2000 and r["qps"] > 0 and r["p99_ms"] >= r["p50_ms"] > 0 for r in rows)
    assert [r["recall_at_k"] for r in rows if r["kind"] == "flat"] == [1.0]
    assert all(0.0 <= r["recall_at_k"] <= 1.0 for r in rows)
    assert sum(r["default"] for r in rows) == 4  # one default point per kind, the rest is the sweep
    pq = next(r for r in rows if r["kind"] == "ivf_pq")
    flat = next(r for r in rows if r["kind"] == "flat")
    assert pq["index_bytes"] < flat["index_bytes"]
    markdown = paths["md"].read_text()
    assert "python -m benchmarks.search_faiss --out" in markdown and "| 2,000 | flat | cpu |" in markdown
    assert str(paths["png"]) in result.output


def test_skips_are_reported_with_their_reason(tmp_path):
    config = SearchBenchConfig(sizes=(1000, 3000), dim=16, kinds=("flat", "hnsw"), n_queries=20, n_latency=20,
                               seconds_per_point=0.01, sweep=False, max_build_s=1e-9, skip=("flat@1000",))
    result = run_search_benchmark(config)
    measured = {(r["kind"], r["n"]) for r in result["results"]}
    assert measured == {("hnsw", 1000), ("flat", 3000)}  # flat@3000 has no earlier build to extrapolate
    reasons = {(s["kind"], s["n"]): s["reason"] for s in result["skipped"]}
    assert "--skip" in reasons[("flat", 1000)]
    assert "estimated build" in reasons[("hnsw", 3000)] and "N=1,000" in reasons[("hnsw", 3000)]


def test_bad_options_are_one_line_errors(tmp_path):
    runner = CliRunner()
    bad_kind = runner.invoke(app, ["--out", str(tmp_path), "--sizes", "100", "--kinds", "lsh"])
    assert bad_kind.exit_code == 2 and "unknown index kind" in bad_kind.output
    bad_size = runner.invoke(app, ["--out", str(tmp_path), "--sizes", "ten"])
    assert bad_size.exit_code == 2 and "--sizes" in bad_size.output


def test_synthetic_embeddings_are_clustered_unit_vectors():
    x = synthetic_embeddings(3000, 64, n_clusters=20, seed=1)
    assert x.dtype == np.float32 and x.shape == (3000, 64)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sims = x[:200] @ x.T
    np.fill_diagonal(sims[:, :200], -1)
    assert sims.max(axis=1).mean() > 0.8 > 0.2 > abs(sims.mean())  # tight neighbours, unrelated on average
    np.testing.assert_array_equal(x, synthetic_embeddings(3000, 64, n_clusters=20, seed=1))
