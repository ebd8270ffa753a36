"""`slidesearch demo` on a small cohort: it says what it did, leaves a usable index, and a re-run reuses everything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval.cli import app

SMALL = ["--model", "tiny", "--patients", "8", "--slides-per-patient", "2", "--size", "1024", "--workers", "0", "--quiet"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("demo") / "demo-out"
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *SMALL])
    assert result.exit_code == 0, result.output
    return out, result


def test_demo_output_names_random_weights_chance_rate_and_real_weights(demo):
    out, result = demo
    text = " ".join(result.stdout.split())
    assert "image encoder `tiny` has RANDOM weights" in text and "all-MiniLM-L6-v2 (REAL weights" in text
    assert "REPORTS" in text and "text tower's share of the ranking is arbitrary" in text
    assert "chance rate (mMV) = 0.250" in text
    assert "--model conch --checkpoint /path/to/conch/pytorch_model.bin" in text
    for kind in ("text query", "slide query", "patch query"):
        assert kind in text
    for mode in ("proto", "mean", "patch-vote", "random ranking"):
        assert mode in text
    assert "16 slides indexed now" in text and str(out / "index") in text
    assert f"slidesearch serve {out / 'index'}" in text and "http://127.0.0.1:8000/" in text


def test_demo_writes_benchmark_reports_and_thumbnails(demo):
    out, _ = demo
    bench = json.loads((out / "bench" / "bench_retrieval.json").read_text())
    assert bench["n_queries"] == 16 and bench["exclude_same"] == "patient_id" and bench["label"] == "label"
    assert set(bench["results"]) == {"proto", "mean", "patch-vote"}
    for mode, res in bench["results"].items():  # leave-one-patient-out: the patient's own slides never come back
        for query, hits in res["hits"].items():
            assert hits and not {h.split("-")[0] for h in hits} & {query.split("-")[0]}, mode
    with Image.open(out / "bench" / "bench_retrieval.png") as png:
        assert png.format == "PNG"
    thumbs = sorted((out / "thumbnails").glob("*/*.png"))
    assert {p.parent.name for p in thumbs} == {"text", "slide", "patch"} and len(thumbs) == 9


def test_demo_index_works_with_info_and_search(demo):
    out, _ = demo
    index = str(out / "index")
    info = CliRunner().invoke(app, ["info", index, "--json"])
    assert info.exit_code == 0, info.output
    assert json.loads(info.stdout)["counts"]["slides_ok"] == 16
    found = CliRunner().invoke(app, ["search", "slide", index, "P000-S1", "-k", "3", "--exclude-same", "patient_id", "--json"])
    assert found.exit_code == 0, found.output
    hits = json.loads(found.stdout)["hits"]
    assert len(hits) == 3 and all(h["metadata"]["patient_id"] != "P000" for h in hits)
    text = CliRunner().invoke(app, ["search", "text", index, "lymphocytes", "-k", "2"])
    assert text.exit_code == 0, text.output


def test_rerun_reuses_cohort_and_index(demo):
    out, _ = demo
    before = (out / "cohort" / "P000-S1.tif").stat().st_mtime_ns
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *SMALL, "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["cohort_reused"] and summary["indexed"] == [] and len(summary["skipped"]) == 16
    assert (out / "cohort" / "P000-S1.tif").stat().st_mtime_ns == before
    assert "RANDOM weights" in summary["note"] and "all-MiniLM-L6-v2" in summary["note"]


def test_other_settings_in_the_same_folder_are_refused(demo):
    out, _ = demo
    result = CliRunner().invoke(app, ["demo", "--out", str(out), *SMALL, "--seed", "7"])
    assert result.exit_code == 2
    assert "other settings" in result.stderr and "Traceback" not in result.output


CLASS_QUERIES = {
    "adenocarcinoma": "poorly differentiated adenocarcinoma with necrosis",  # the demo's own query
    "mucinous_adenocarcinoma": "mucinous adenocarcinoma with pools of extracellular mucin",
    "lymphoma": "diffuse sheets of atypical lymphoid cells, lymphoma",
    "lipoma": "lipoma, mature adipose tissue",
}


def test_text_search_ranks_the_described_class_first_through_the_reports(demo):
    """The demo indexes the cohort's `report` column, so a text query describing one diagnosis ranks that diagnosis's
    slides first (4 a class in this cohort), though `tiny`'s text tower is random."""
    out, result = demo
    index = str(out / "index")
    info = json.loads(CliRunner().invoke(app, ["info", index, "--json"]).stdout)
    assert info["reports"]["column"] == "report" and info["reports"]["slides"] == 16
    for label, query in CLASS_QUERIES.items():
        found = CliRunner().invoke(app, ["search", "text", index, query, "-k", "4", "--json"])
        assert found.exit_code == 0, found.output
        hits = json.loads(found.stdout)["hits"]
        assert [h["metadata"]["label"] for h in hits] == [label] * 4, (query, [h["metadata"]["label"] for h in hits])
        assert hits[0]["report"]["sentence"]
    image_only = CliRunner().invoke(app, ["search", "text", index, CLASS_QUERIES["adenocarcinoma"], "-k", "4",
                                          "--source", "image", "--json"])
    assert [h["metadata"]["label"] for h in json.loads(image_only.stdout)["hits"]] != ["adenocarcinoma"] * 4  # tiny alone
    demo_hits = [line for line in result.stdout.splitlines() if "│" in line and "adenocarcinoma" in line]
    assert demo_hits, "the demo's own text query shows adenocarcinoma slides"
