"""`bench retrieval` on the planted index: mMV values computed by hand for that cohort, exclusions, reports.

The planted cohort (benchmarks/fixtures/planted.py): S01–S08, two slides per patient P1–P4, each 3/4 of one tissue
(its ``label``) and 1/4 of another; the planted encoder maps each tissue to one direction. So:

- leave one *slide* out: every slide's nearest other slide is its patient sibling (same major tissue,
  composition overlap 0.75² against ≤ 0.75·0.25 for any other slide) → mMV@1 = 1 in every class and mode;
- leave one *patient* out: no slide of the query's label is left → every metric is 0;
- label ``organ`` (colon: S01–S06, lymph node: S07–S08), leave one patient out: a colon query keeps 4 colon
  and 2 lymph-node slides, so any 5 of them vote colon (1.0); a lymph-node query keeps only colon slides
  (0.0) → mMV@5 = (1 + 0) / 2 = 0.5, for any ranking that ranks at least 5 slides.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.fixtures import planted
from indexer.ingestion.run import IndexConfig, run_index
from retrieval.evaluation.bench_retrieval import MODES, run_retrieval_benchmark
from retrieval.cli import app
from assertions import one_error_line

PATIENT = {slide: patient for slide, (_, _, patient) in planted.COHORT.items()}
ALL_PATCHES = 1000  # patch-vote neighbours ≥ every patch of the cohort: votes are exact sums, no ties at the cut


@pytest.fixture(scope="module")
def built(planted_index) -> tuple[Path, Path, IndexConfig]:
    return planted_index


@pytest.fixture(scope="module")
def index(built) -> Path:
    return built[0]


def test_leave_one_slide_out_ranks_the_sibling_first_in_every_mode(index):
    result = run_retrieval_benchmark(index, "label", ks=(1,), exclude_same=None, modes=MODES, patch_neighbours=ALL_PATCHES)
    assert result["n_queries"] == 8 and result["skipped_unlabelled"] == 0
    assert result["classes"] == {"lymphocytes": 2, "mucin": 2, "necrosis": 2, "tumour": 2}
    assert result["chance"]["mMV"] == pytest.approx(0.25)
    for mode in MODES:
        res = result["results"][mode]
        assert res["metrics"]["mMV@1"] == 1.0 and res["metrics"]["Acc@1"] == 1.0 and res["metrics"]["mAP@1"] == 1.0
        assert set(res["per_class"]["mMV@1"].values()) == {1.0}
        for query, hits in res["hits"].items():
            sibling = next(s for s in planted.COHORT if PATIENT[s] == PATIENT[query] and s != query)
            assert hits == [sibling], (mode, query, hits)


def test_leaving_the_patient_out_leaves_no_same_label_slide(index):
    result = run_retrieval_benchmark(index, "label", ks=(1, 5), exclude_same="patient_id", modes=MODES,
                                     patch_neighbours=ALL_PATCHES)
    assert result["n_relevant_mean"] == 0
    for mode in MODES:
        assert set(result["results"][mode]["metrics"].values()) == {0.0}, mode
        for query, hits in result["results"][mode]["hits"].items():
            assert hits and PATIENT[query] not in {PATIENT[h] for h in hits} and query not in hits
    assert result["random"]["metrics"]["mMV@5"] == 0.0


def test_organ_labels_give_half_macro_majority_vote(index):
    result = run_retrieval_benchmark(index, "organ", ks=(5,), exclude_same="patient_id", modes=MODES,
                                     patch_neighbours=ALL_PATCHES)
    assert result["classes"] == {"colon": 6, "lymph node": 2} and result["chance"]["mMV"] == 0.5
    for mode in MODES:
        res = result["results"][mode]
        assert res["per_class"]["mMV@5"] == {"colon": 1.0, "lymph node": 0.0}, mode
        assert res["metrics"]["mMV@5"] == 0.5
        assert res["metrics"]["Acc@5"] == pytest.approx(6 / 8)  # micro: 6 colon queries hit, 2 lymph-node miss


def test_patch_vote_samples_at_most_the_requested_patches(index):
    # one query patch per slide: the first patch of S01 is tumour (the top 3/4), so it votes for the
    # other slides with tumour patches: S02 (48 of them) before S05 (16)
    result = run_retrieval_benchmark(index, "label", ks=(2,), exclude_same=None, modes=("patch-vote",),
                                     max_query_patches=1, patch_neighbours=ALL_PATCHES)
    assert result["results"]["patch-vote"]["hits"]["S01"] == ["S02", "S05"]
    assert result["patch_vote"] == {"max_query_patches": 1, "patch_neighbours": ALL_PATCHES}


def test_unlabelled_slides_are_skipped_and_never_retrieved(built, tmp_path):
    index, cohort, config = built
    copy = tmp_path / "idx"
    shutil.copytree(index, copy)
    lines = (cohort / "metadata.csv").read_text().splitlines()
    relabelled = [lines[0]] + [",".join(["" if i == 2 and line.startswith(("S07", "S08")) else v
                                         for i, v in enumerate(line.split(","))]) for line in lines[1:]]
    csv = tmp_path / "metadata.csv"
    csv.write_text("\n".join(relabelled) + "\n")
    assert not run_index([cohort], copy, config, metadata_csv=csv, show_progress=False).failed  # re-labels only
    result = run_retrieval_benchmark(copy, "label", ks=(1, 3), exclude_same=None, modes=MODES, patch_neighbours=ALL_PATCHES)
    assert result["skipped_unlabelled"] == 2 and result["n_queries"] == 6
    assert result["chance"]["mMV"] == pytest.approx(1 / 3)
    for mode in MODES:
        hits = result["results"][mode]["hits"]
        assert set(hits) == {"S01", "S02", "S03", "S04", "S05", "S06"}
        assert not {"S07", "S08"} & {h for ranked in hits.values() for h in ranked}
        assert result["results"][mode]["metrics"]["mMV@1"] == 1.0


def test_cli_writes_json_markdown_and_png(index, tmp_path):
    out = tmp_path / "report"
    result = CliRunner().invoke(app, ["bench", "retrieval", str(index), "--label", "organ", "--k", "1,5",
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["modes"] == list(MODES) and data["exclude_same"] == "patient_id"
    assert data["convention"] == "slidesearch"
    assert json.loads((out / "bench_retrieval.json").read_text())["results"]["mean"]["metrics"]["mMV@5"] == 0.5
    markdown = (out / "bench_retrieval.md").read_text()
    assert "Chance rate (mMV): 0.500" in markdown and "| patch-vote |" in markdown and "Per-class mMV@5" in markdown
    with Image.open(out / "bench_retrieval.png") as png:
        assert png.format == "PNG" and png.width > 500
    table = CliRunner().invoke(app, ["bench", "retrieval", str(index), "--label", "label", "--exclude-same", "none",
                                     "--mode", "mean", "--out", str(out)])
    assert table.exit_code == 0 and "| mean | 1.000 |" in table.stdout and "| proto |" not in table.stdout
    assert "Metric convention: `slidesearch`" in markdown


def test_sish_convention_is_stated_and_changes_short_lists(index, tmp_path):
    # leave-one-patient-out over 8 slides leaves 6 candidates: at k=10 every list is short, so SISH counts a
    # vote only with >= 5 same-label hits (a colon query keeps 4 colon slides, a lymph-node query none)
    result = CliRunner().invoke(app, ["bench", "retrieval", str(index), "--label", "organ", "--k", "10",
                                      "--mode", "mean", "--convention", "sish", "--out", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["convention"] == "sish"
    assert data["results"]["mean"]["metrics"]["mMV@10"] == 0.0
    assert "Metric convention: `sish`" in (tmp_path / "bench_retrieval.md").read_text()
    default = run_retrieval_benchmark(index, "organ", ks=(10,), modes=("mean",))
    assert default["results"]["mean"]["metrics"]["mMV@10"] > 0.0
    bad = CliRunner().invoke(app, ["bench", "retrieval", str(index), "--label", "organ", "--convention", "trec",
                                   "--out", str(tmp_path)])
    assert bad.exit_code != 0 and "convention" in one_error_line(bad)


@pytest.mark.parametrize("args, message", [
    (["--label", "diagnosis"], "no such column"),
    (["--label", "label", "--exclude-same", "hospital"], "no such column"),
    (["--label", "label", "--mode", "median"], "unknown mode"),
    (["--label", "label", "--k", "0"], "at least 1"),
    (["--label", "label", "--k", "five"], "comma-separated"),
    (["--label", "patient_id", "--where-not-an-option"], "No such option"),
])
def test_bad_arguments_get_one_line_and_nonzero_exit(index, tmp_path, args, message):
    result = CliRunner().invoke(app, ["bench", "retrieval", str(index), *args, "--out", str(tmp_path)])
    assert result.exit_code != 0
    assert message in result.output


def test_single_class_is_refused(index, tmp_path):
    result = CliRunner().invoke(app, ["bench", "retrieval", str(index), "--label", "status", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "need at least 2" in one_error_line(result)
