"""benchmarks/index.py (`python -m benchmarks.index`) with `tiny` on two small slides: fresh-process runs, stage timings, peak RSS, reports."""

from __future__ import annotations

import json

from PIL import Image
from typer.testing import CliRunner

from benchmarks.index import app


def test_bench_index_on_two_tiny_slides_writes_its_reports(tmp_path):
    out, work = tmp_path / "report", tmp_path / "work"
    result = CliRunner().invoke(app, ["--out", str(out), "--models", "tiny", "--slides", "1,2",
                                      "--slide-px", "1024", "--workers", "0", "--workdir", str(work), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    one, two = data["runs"]
    assert (one["model"], one["n_slides"], two["n_slides"]) == ("tiny", 1, 2)
    assert 0 < one["patches"] < two["patches"]
    for run in data["runs"]:
        assert {"load model", "tissue", "tile", "embed", "faiss"} <= set(run["timings"])
        assert run["patches_per_s"] == run["patches"] / run["index_seconds"]
        assert run["index_seconds"] < run["process_seconds"]  # interpreter start-up is outside the timed call
        assert run["peak_rss_mb"] >= run["main_process_rss_mb"] > 50  # a real, separate process was measured
    assert data["memory"]["slides"] == [1, 2] and data["memory"]["peak_rss_mb"] == [one["peak_rss_mb"], two["peak_rss_mb"]]
    assert sorted(p.name for p in work.glob("index-*")) == ["index-0", "index-1"]  # one fresh index per run
    stored = json.loads((out / "bench_index.json").read_text())
    assert stored["runs"] == data["runs"]
    markdown = (out / "bench_index.md").read_text()
    assert "| tiny | 2 |" in markdown and "Time by stage" in markdown and "Peak RSS" in markdown
    with Image.open(out / "bench_index.png") as png:
        assert png.format == "PNG" and png.width > 500


def test_bench_index_refuses_unknown_models_before_doing_anything(tmp_path):
    result = CliRunner().invoke(app, ["--out", str(tmp_path / "r"), "--models", "tiny,resnet50"])
    assert result.exit_code == 2 and "unknown model 'resnet50'" in result.stderr
    assert not (tmp_path / "r").exists()
