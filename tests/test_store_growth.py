"""benchmarks/growth.py and benchmarks/search.py --segments: live vs compacted on small synthetic indexes whose
quantizers are trained part-way (a small plan: exact up to 500 vectors, provisional up to 39·32, then full)."""

from __future__ import annotations

import json

import pytest

from benchmarks import growth, search
from indexer.store import quantizer

PLAN = quantizer.QuantizerPlan(nlist=32, nprobe=8, exact_max=500)


def test_growth_times_every_state_against_its_compacted_copy_and_reports_the_worst(tmp_path, monkeypatch):
    monkeypatch.setattr(quantizer, "PLAN", PLAN)
    result = growth.main(["--slides", "240", "--commit", "20", "--every", "3", "--queries", "3", "--warmup", "1",
                          "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")])
    assert json.loads((tmp_path / "out" / "bench_growth.json").read_text())["worst"] == result["worst"]
    assert "Worst live / compacted" in (tmp_path / "out" / "bench_growth.md").read_text()
    paired = growth.main(["--pairs", f"{tmp_path / 'work' / 'live'}:{tmp_path / 'work' / 'live'}", "--queries", "3",
                          "--warmup", "1", "--out", str(tmp_path / "pairs")])  # an index against itself
    assert [c["queries"] for c in paired["states"][0]["cells"]] == [3] * 6
    assert paired["states"][0]["patch_recall_at_10"]["live"] == paired["states"][0]["patch_recall_at_10"]["compacted"]
    assert [s["commit"] for s in result["states"]] == [3, 6, 9, 12] and len(result["commits"]) == 12
    cells = [c for s in result["states"] for c in s["cells"]]
    assert {(c["type"], c["where"]) for c in cells} == {(t, w) for t in ("text", "slide", "patch")
                                                        for w in (None, growth.WHERE)}
    for c in cells:
        assert c["queries"] == 3 and c["ratio"] == pytest.approx(c["live_p50_ms"] / c["compacted_p50_ms"], rel=0.01)
    assert result["worst"]["ratio"] == max(c["ratio"] for c in cells)
    patches = [s["live"]["factories"]["patches"] for s in result["states"]]
    assert patches[0].startswith("IVF8_") and patches[-1].startswith("IVF32_")  # provisional (600), then full
    for state in result["states"]:  # never an exact segment beside the quantizer's, and the same as compacted
        for name in ("patches", "subvectors"):
            assert "+" not in state["live"]["factories"][name]
            assert state["live"]["factories"][name] == state["compacted"]["factories"][name]
        assert state["compacted"]["segments"] == 1
        assert all(0 < r <= 1 for r in (*state["patch_recall_at_10"].values(), state["live"]["recorded_patch_recall"]))
    assert result["states"][-1]["live"]["segments"] == 3  # ten commits merged into one, then two more
    assert any(c["merges"] for c in result["commits"]) and any(c["backfill_s"] > 0 for c in result["commits"])


def test_search_benchmark_compares_live_segments_with_one(tmp_path, monkeypatch):
    monkeypatch.setattr(quantizer, "PLAN", PLAN)
    result = search.main(["--sizes", "300", "--segments", "1,3", "--queries", "3", "--warmup", "1", "--flat-at", "",
                          "--encoder", "none", "--keep", str(tmp_path / "indexes"), "--out", str(tmp_path / "out")])
    rows = result["results"]
    assert {(r["segments"], r["type"], r["where"]) for r in rows} == {
        (s, t, w) for s in (1, 3) for t in ("text", "slide", "patch") for w in (None, search.WHERE)}
    assert all(r["api_p50_ms"] > 0 for r in rows)
    live = result["indexes"]["300/auto/3 segments"]
    assert live["patches"].startswith("IVF") and "+" not in live["patches"]  # back-filled, one inverted index


def test_growth_builds_a_planned_state_and_its_compacted_copy_for_timing_later(tmp_path, monkeypatch):
    monkeypatch.setattr(quantizer, "PLAN", PLAN)
    work = tmp_path / "work"
    built = growth.main(["--plan", "120,2x30,3x5", "--every", "0", "--work", str(work), "--out", str(tmp_path / "b")])
    assert [c["slides"] for c in built["commits"]] == [120, 150, 180, 185, 190, 195]
    assert built["states"] == [] and built["worst"] is None
    assert "No state measured" in (tmp_path / "b" / "bench_growth.md").read_text()
    paired = growth.main(["--pairs", f"{work / 'live'}:{work / 'compacted'}", "--queries", "3", "--warmup", "1",
                          "--out", str(tmp_path / "p")])
    state = paired["states"][0]
    assert state["live"]["segments"] == 6 and state["compacted"]["segments"] == 1  # no merge: 3 tiers
    assert len(state["cells"]) == 6 and paired["worst"]["ratio"] > 0
