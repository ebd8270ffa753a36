"""Multi-stain cases (issue #16): stain detection, case ids, case and cross-stain search, slide-encoder spaces.

The cohort (retrieval/demo/multistain.py): six cases (three per diagnosis), each an H&E slide and a DAB-IHC
rendering of the same morphology, indexed once with the ``tiny`` encoder. Its CSV has no case_id column (so
case_id falls back to patient_id), P002-IHC1 has no patient_id (its case is itself), and only P000-HE1 has a
``stain`` (so every other stain is detected). The test also writes slide-encoder files in TRIDENT's layout:
each slide's vector is its case's direction (plus a little noise), so in that space a slide's own case is nearest.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

from assertions import one_error_line
from indexer.ingestion.run import IndexConfig, run_index
from indexer.tiles.stain import detect_slide_stain, detect_stain
from retrieval.demo.synthetic import DIAGNOSES
from retrieval.demo.multistain import write_multistain_cohort
from indexer.tiles.tiling import TilingConfig
from retrieval.query.cases import CaseSearcher, fused_scores
from retrieval.query.catalog import Catalog
from retrieval.search import SlideSearcher

SPACE = "trident-test"
DIM = 12


def write_trident_slide_features(folder: Path, slide_ids: list[str], case_of: dict[str, int], seed: int = 0) -> None:
    """TRIDENT's slide-encoder layout: <slide>.h5 with `features` (D,) (one file (1, D)) and `coords` + attrs."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i, slide_id in enumerate(slide_ids):
        vector = np.eye(DIM, dtype=np.float32)[case_of[slide_id]] * 3 + 0.1 * rng.standard_normal(DIM).astype(np.float32)
        with h5py.File(folder / f"{slide_id}.h5", "w") as h5:
            h5.create_dataset("features", data=vector[None] if i == 0 else vector)
            h5["features"].attrs.update({"name": slide_id, "savetodir": str(folder)})
            h5.create_dataset("coords", data=np.zeros((3, 2), np.int64))
            h5["coords"].attrs["patch_size_level0"] = 256


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    root = tmp_path_factory.mktemp("multistain")
    diagnoses = {name: DIAGNOSES[name] for name in ("adenocarcinoma", "lymphoma")}
    csv_path = write_multistain_cohort(root / "cohort", n_patients=6, diagnoses=diagnoses, size=(1024, 1024),
                                       show_progress=False)
    with csv_path.open() as fh:
        rows = list(csv.DictReader(fh))
    edited = root / "metadata.csv"
    with edited.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide_id", "patient_id", "label", "organ", "true_stain", "stain"])
        writer.writeheader()
        for row in rows:
            row.pop("case_id")
            row["stain"] = "H&E" if row["slide_id"] == "P000-HE1" else ""
            if row["slide_id"] == "P002-IHC1":
                row["patient_id"] = ""
            writer.writerow(row)
    case_of = {r["slide_id"]: int(r["slide_id"][1:4]) for r in rows}  # P003-IHC1 → 3
    write_trident_slide_features(root / "slide_features", list(case_of), case_of)
    config = IndexConfig(model="tiny", tiling=TilingConfig(magnification=10, patch_px=64), num_workers=0,
                         slide_features_dir=str(root / "slide_features"), slide_encoder=SPACE)
    report = run_index([root / "cohort"], root / "index", config, metadata_csv=edited, show_progress=False)
    assert not report.failed, report.failed
    return root, rows


@pytest.fixture(scope="module")
def index(cohort) -> Path:
    return cohort[0] / "index"


def slides_of(index: Path) -> dict[str, dict]:
    return {s["slide_id"]: s for s in Catalog(index).slides.to_pylist()}


# -- stains and case ids ----------------------------------------------------------------------------
def test_real_slides_are_called_he_and_ihc(shared_slides):
    from indexer.slides import open_slide
    from indexer.tiles.tissue import detect_tissue

    for name, stain in (("tcga-cr-7395-01a-01-ts1.svs", "H&E"), ("kidney-48-5.tif", "IHC")):
        with open_slide(shared_slides / name, require_mpp=False) as slide:
            call = detect_slide_stain(slide, detect_tissue(slide))
        assert call.stain == stain, (name, call)
    assert call.eosin_share < 0.01  # the IHC image has no eosin at all


def test_detection_follows_the_eosin_share():
    small = np.zeros((10, 20, 3), np.uint8) + 245
    small[:, :5] = (230, 150, 190)
    tiny_mask = np.zeros((10, 20), bool)
    tiny_mask[0, 0] = True
    assert detect_stain(small, tiny_mask).pixels == 50  # too small a mask: every non-background pixel instead
    big = np.zeros((40, 40, 3), np.uint8) + 240
    big[:, :20], big[:, 20:] = (230, 150, 190), (140, 90, 45)
    mask = np.zeros((40, 40), bool)
    mask[:, :20] = True
    assert detect_stain(big, mask).stain == "H&E"
    assert detect_stain(big, ~mask).stain == "IHC"
    assert detect_stain(np.full((8, 8, 3), 245, np.uint8)).pixels == 64  # all background: measured anyway


def test_stains_are_detected_unless_the_metadata_gives_them(index):
    slides = slides_of(index)
    assert all(s["stain"] == s["true_stain"] for s in slides.values())
    assert slides["P000-HE1"]["stain_source"] == "metadata"
    assert {s["stain_source"] for k, s in slides.items() if k != "P000-HE1"} == {"detected"}
    assert all(s["stain_eosin_share"] >= 0.05 for s in slides.values() if s["stain"] == "H&E")
    assert Catalog(index).allowed_slide_rows("stain = 'IHC'").size == 6  # a filterable column like any other


def test_case_id_defaults_to_patient_id_else_the_slide_id(index):
    slides = slides_of(index)
    assert slides["P001-HE1"]["case_id"] == slides["P001-IHC1"]["case_id"] == "P001"
    assert slides["P002-IHC1"]["case_id"] == "P002-IHC1" and slides["P002-HE1"]["case_id"] == "P002"


def test_a_metadata_case_id_wins(index, tmp_path, run_cli):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    (tmp_path / "cases.csv").write_text("slide_id,case_id\nP003-HE1,CASE-X\nP003-IHC1,CASE-X\n")
    assert run_cli("metadata", copy, tmp_path / "cases.csv").exit_code == 0
    slides = slides_of(copy)
    assert slides["P003-HE1"]["case_id"] == "CASE-X" and slides["P004-HE1"]["case_id"] == "P004"


# -- fused case scores ---------------------------------------------------------------------------------
def explicit_case_vector(vectors, keys, members, n_keys, fusion):
    """The fused case vector written out: per-stain normalised means concatenated (concat), or one mean."""
    if fusion == "mean":
        v = vectors[members].sum(axis=0)
        return v / np.linalg.norm(v)
    blocks = np.zeros((n_keys, vectors.shape[1]))
    for key in range(n_keys):
        chosen = [m for m in members if keys[m] == key]
        if chosen:
            block = vectors[chosen].sum(axis=0)
            blocks[key] = block / np.linalg.norm(block)
    flat = blocks.ravel()
    return flat / np.linalg.norm(flat)


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize("fusion", ["mean", "concat"])
def test_fused_scores_equal_cosines_of_explicit_case_vectors(seed, fusion):
    rng = np.random.default_rng(seed)
    n, d, n_cases, n_keys = 40, 6, 9, 3
    vectors = rng.standard_normal((n, d))
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    case = rng.integers(0, n_cases, n)
    keys = rng.integers(0, n_keys, n) if fusion == "concat" else np.zeros(n, int)
    q_at = np.flatnonzero(case == case[0])
    allowed = (case != case[0]) & (rng.random(n) < 0.8)
    score, _ = fused_scores(vectors, case, keys, q_at, allowed, n_cases, fusion)
    query = explicit_case_vector(vectors, keys, list(q_at), keys.max() + 1, fusion)
    for c in range(n_cases):
        members = [i for i in np.flatnonzero(case == c) if allowed[i]]
        if not members:
            assert score[c] == -np.inf
            continue
        assert score[c] == pytest.approx(float(query @ explicit_case_vector(vectors, keys, members, keys.max() + 1, fusion)))


def test_max_fusion_is_the_best_slide():
    vectors = np.eye(3)[[0, 1, 2, 0]]
    score, sims = fused_scores(vectors, np.array([0, 1, 1, 2]), np.zeros(4, int), np.array([0]),
                               np.array([False, True, True, True]), 3, "max")
    assert score.tolist() == [-np.inf, 0.0, 1.0] and sims.tolist() == [0.0, 0.0, 0.0, 1.0]


# -- case and cross-stain search -------------------------------------------------------------------
def test_search_case_returns_cases_with_slides_by_stain(index, run_cli):
    result = run_cli("search", "case", index, "P001", "-k", "10", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["kind"] == "case" and data["details"]["query_case"] == "P001"
    assert {s["slide_id"] for s in data["details"]["query_slides"]} == {"P001-HE1", "P001-IHC1"}
    cases = [h["case_id"] for h in data["hits"]]
    assert "P001" not in cases and len(cases) == 6  # five other patients and the lone P002-IHC1 case
    assert [h["score"] for h in data["hits"]] == sorted((h["score"] for h in data["hits"]), reverse=True)
    for hit in data["hits"]:
        assert hit["matched"]["slide_id"] in {s["slide_id"] for s in hit["slides"]}
        assert set(hit["stains"]) == {s["stain"] for s in hit["slides"]}
        assert hit["matched"]["stain"] == hit["slides"][0]["stain"] and hit["matched"]["prototypes"]
    by_id = {h["case_id"]: h for h in data["hits"]}
    assert set(by_id["P003"]["stains"]) == {"H&E", "IHC"} and set(by_id["P002-IHC1"]["stains"]) == {"IHC"}
    table = run_cli("search", "case", index, "P001-IHC1", "-k", "3")
    assert table.exit_code == 0 and "case P001" in table.stdout and "H&E:" in table.stdout


def test_ihc_query_with_target_stain_returns_he_only(index, run_cli):
    slides = run_cli("search", "slide", index, "P000-IHC1", "--target-stain", "H&E", "-k", "20", "--json")
    assert slides.exit_code == 0, slides.output
    data = json.loads(slides.stdout)
    assert len(data["hits"]) == 6 and {h["metadata"]["stain"] for h in data["hits"]} == {"H&E"}
    assert data["details"]["target_stain"] == "H&E" and data["details"]["query_stain"] == "IHC"
    assert all(h["prototypes"] for h in data["hits"])  # why: the shared prototype terms
    cases = json.loads(run_cli("search", "case", index, "P000-IHC1", "--target-stain", "H&E", "--json").stdout)
    assert all(set(h["stains"]) == {"H&E"} and h["matched"]["stain"] == "H&E" for h in cases["hits"])
    assert "P002-IHC1" not in [h["case_id"] for h in cases["hits"]]  # a case with no H&E slide has nothing to offer


def test_group_case_scores_each_case_by_its_best_slide(index, run_cli):
    searcher = SlideSearcher(index)
    plain = searcher.search_slide("P004-HE1", k=20)
    case_of = {h.slide_id: h.metadata["case_id"] for h in plain.hits}
    best: dict[str, float] = {}
    for hit in plain.hits:
        if case_of[hit.slide_id] != "P004":
            best.setdefault(case_of[hit.slide_id], hit.score)
    grouped = json.loads(run_cli("search", "slide", index, "P004-HE1", "--group", "case", "-k", "20", "--json").stdout)
    assert [h["case_id"] for h in grouped["hits"]] == list(best)
    assert [h["score"] for h in grouped["hits"]] == pytest.approx(list(best.values()), abs=1e-5)


def test_case_search_from_python_agrees_for_a_case_and_its_only_slide(index):
    cases = CaseSearcher(SlideSearcher(index))
    by_case = cases.search("P002-IHC1", k=3)
    assert by_case.details["query_case"] == "P002-IHC1" and len(by_case.details["query_slides"]) == 1
    he_only = cases.search("P001", k=5, target_stain="H&E", query_stain="H&E")
    assert [s["slide_id"] for s in he_only.details["query_slides"]] == ["P001-HE1"]


# -- slide-encoder space -------------------------------------------------------------------------
def test_slide_encoder_space_is_searched_exactly(index, cohort, run_cli):
    result = run_cli("search", "slide", index, "P003-IHC1", "--space", SPACE, "-k", "4", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["details"]["space"] == SPACE
    vectors = {}
    for path in sorted((cohort[0] / "slide_features").glob("*.h5")):
        with h5py.File(path) as h5:
            v = np.asarray(h5["features"], np.float64).ravel()
        vectors[path.stem] = v / np.linalg.norm(v)
    expected = sorted(vectors, key=lambda s: -vectors[s] @ vectors["P003-IHC1"])[:4]
    assert [h["slide_id"] for h in data["hits"]] == expected and expected[:2] == ["P003-IHC1", "P003-HE1"]
    assert data["hits"][1]["score"] == pytest.approx(vectors["P003-HE1"] @ vectors["P003-IHC1"], abs=1e-5)
    assert json.loads(run_cli("info", index, "--json").stdout)["spaces"] == [SPACE]
    assert f"slide-encoder spaces (search slide|case --space): {SPACE}" in run_cli("info", index).stdout
    cross = json.loads(run_cli("search", "case", index, "P003-IHC1", "--space", SPACE, "--target-stain", "H&E",
                               "--json").stdout)
    assert cross["details"]["space"] == SPACE and cross["hits"][0]["case_id"] != "P003"  # own case left out


def test_slide_encoder_space_survives_compaction(index, tmp_path, run_cli):
    copy = tmp_path / "index"
    shutil.copytree(index, copy)
    before = json.loads(run_cli("search", "slide", copy, "P001-HE1", "--space", SPACE, "-k", "20", "--json").stdout)
    assert run_cli("remove", copy, "P005-HE1").exit_code == 0
    assert run_cli("compact", copy).exit_code == 0
    after = json.loads(run_cli("search", "slide", copy, "P001-HE1", "--space", SPACE, "-k", "20", "--json").stdout)
    kept = [(h["slide_id"], round(h["score"], 5)) for h in before["hits"] if h["slide_id"] != "P005-HE1"]
    assert [(h["slide_id"], round(h["score"], 5)) for h in after["hits"]] == kept
    assert slides_of(copy)["P001-HE1"]["stain"] == "H&E"


def test_bad_slide_features_fail_that_slide_with_a_reason(tmp_path, make_slide):
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in ("A", "B", "C"):
        shutil.move(make_slide(name=name), folder / f"{name}.tif")
    features = tmp_path / "features"
    write_trident_slide_features(features, ["A"], {"A": 0})
    with h5py.File(features / "B.h5", "w") as h5:
        h5.create_dataset("features", data=np.ones((3, 4), np.float32))  # patch features, not one slide vector
    config = IndexConfig(model="tiny", tiling=TilingConfig(magnification=10, patch_px=64), num_workers=0,
                         slide_features_dir=str(features), slide_encoder="titan")
    report = run_index([folder], tmp_path / "index", config, show_progress=False)
    assert set(report.failed) == {"B", "C"} and report.indexed == ["A"]
    assert "expected one vector" in report.failed["B"] and "no slide features file" in report.failed["C"]


@pytest.mark.parametrize("args, message", [
    (["search", "case", "{index}", "NOPE"], "unknown case or slide"),
    (["search", "case", "{index}", "P001", "--fusion", "median"], "unknown fusion"),
    (["search", "case", "{index}", "P001", "--target-stain", "PAS"], "no slide has that stain"),
    (["search", "slide", "{index}", "P001-HE1", "--target-stain", "PAS"], "no slide has that stain"),
    (["search", "slide", "{index}", "P001-HE1", "--space", "titan"], "unknown slide space"),
    (["search", "slide", "{index}", "P001-HE1", "--group", "patient"], "only 'case'"),
    (["search", "case", "{index}", "P001", "--exclude-same", "hospital"], "no such column"),
    (["index", "{index}", "--out", "{index}", "--slide-encoder", "titan"], "go together"),
    (["index", "{index}", "--out", "{index}", "--slide-features", "{index}", "--slide-encoder", "mean"], "--slide-encoder"),
])
def test_bad_input_gets_one_line(index, run_cli, args, message):
    result = run_cli(*[a.format(index=index) for a in args])
    assert result.exit_code != 0 and message in one_error_line(result)


# -- benchmark ------------------------------------------------------------------------------------
def test_bench_retrieval_case_level(index, tmp_path, run_cli):
    result = run_cli("bench", "retrieval", index, "--label", "label", "--level", "case", "--k", "1,3",
                     "--out", tmp_path, "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["level"] == "case" and data["convention"] == "slidesearch"
    assert set(data["results"]) == {f"{s}/{f}" for s in ("proto", "mean", SPACE) for f in ("concat", "mean", "max")}
    assert data["n_queries"] == 7 and data["baselines"]["he_only"]["n_queries"] == 6
    # the planted slide-encoder space puts each IHC slide's own case first: cross-stain Recall@1 = 1
    assert data["cross_stain"]["spaces"][SPACE]["Recall@1"] == 1.0 and data["cross_stain"]["n_queries"] == 5
    assert 0 < data["baselines"]["random"]["metrics"]["mMV@1"] < 1
    markdown = (tmp_path / "bench_cases.md").read_text()
    assert "Metric convention: `slidesearch`" in markdown and "| H&E only" in markdown and "| random" in markdown
    assert (tmp_path / "bench_cases.png").stat().st_size > 10_000
    sish = json.loads(run_cli("bench", "retrieval", index, "--label", "label", "--level", "case", "--k", "3",
                              "--fusion", "mean", "--space", "proto", "--convention", "sish", "--out", tmp_path,
                              "--json").stdout)
    assert sish["convention"] == "sish" and list(sish["results"]) == ["proto/mean"]


def test_segments_written_before_stain_detection_still_read(planted_index, tmp_path, make_slide):
    """An index whose segments predate the stain columns gets a new segment with them: both read as one table."""
    import pyarrow.parquet as pq

    root, _, config = planted_index
    copy = tmp_path / "index"
    shutil.copytree(root, copy)
    for table in copy.glob("segments/*/slides.parquet"):  # as written before this change
        pq.write_table(pq.read_table(table).drop_columns(["stain_detected", "stain_eosin_share"]), table)
    report = run_index([make_slide(name="NEW")], copy, config, show_progress=False)
    assert report.indexed == ["NEW"]
    slides = slides_of(copy)
    assert slides["NEW"]["stain"] == "H&E" and slides["NEW"]["stain_source"] == "detected"
    assert slides["S01"]["stain"] is None and slides["S01"]["stain_source"] is None
    assert slides["S01"]["case_id"] == "P1" and slides["NEW"]["case_id"] == "NEW"
    assert CaseSearcher(SlideSearcher(copy)).search("P1", k=2).hits
