"""benchmarks/incremental.py: adds timed in-process, one commit each, the tenth small segment of a tier merged by the
add that made it (so the figures include merges), model load excluded, each N measured in its own processes."""

from __future__ import annotations

import json

import pytest

from benchmarks import incremental as bench


def test_adds_include_an_automatic_merge_and_the_report_says_so(tmp_path):
    out = tmp_path / "out"
    result = bench.main(["--sizes", "20,40", "--patches", "20", "--adds", "11", "--work", str(tmp_path / "w"),
                         "--out", str(out)])
    for cell in result["cells"]:
        rows = cell["rows"]
        assert len(rows) == 11 and [r["segments"] for r in rows] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 2, 3]
        assert [r["merged"] for r in rows] == [False] * 9 + [True, False]  # the tenth add merged ten segments
        assert cell["merges"] == 1 and all(0 < r["seconds"] for r in rows)
        assert all(r["model_load_s"] > 0 and abs(r["stages"]["load model"] - r["model_load_s"]) < 1e-3 for r in rows)
        assert cell["peak_rss_mb"] > 100  # the adding process's own peak (wait4)
    saved = json.loads((out / "bench_incremental.json").read_text())
    assert saved["provenance"]["command"].startswith("python -m benchmarks.incremental --sizes 20,40")
    text = (out / "bench_incremental.md").read_text()
    assert "| 40 | 11 |" in text and "mean add (merges included)" in text and (out / "bench_incremental.png").is_file()
    again = tmp_path / "again"
    (again / "n20").mkdir(parents=True)
    (again / "n20" / "CURRENT").write_text("v000001\n")
    with pytest.raises(SystemExit):  # a --work folder with indexes in it is refused: every run builds fresh bases
        bench.main(["--sizes", "20", "--work", str(again), "--out", str(tmp_path / "o2")])
