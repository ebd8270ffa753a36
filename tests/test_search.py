"""Query layer on a planted index: the right slides come first, filters are exact, explanations name the truth."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.fixtures import planted
from indexer import vectors as vi
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide
from retrieval.cli import app
from retrieval.query.parse import embed_text_query
from retrieval.query import image as image_source
from retrieval.search import SlideSearcher
from assertions import one_error_line

MAJOR = {slide: major for slide, (major, _, _) in planted.COHORT.items()}
MINOR = {slide: minor for slide, (_, minor, _) in planted.COHORT.items()}
PATIENT = {slide: patient for slide, (_, _, patient) in planted.COHORT.items()}
BORDER = planted.SLIDE_PX * 3 // 4  # dominant class above this y, minor class below


def slides_with(tissue: str, major: bool = True) -> set[str]:
    return {s for s in planted.COHORT if (MAJOR if major else MINOR)[s] == tissue}


@pytest.fixture(scope="module")
def index(planted_index) -> Path:
    return planted_index[0]


@pytest.fixture(scope="module")
def searcher(index) -> SlideSearcher:
    return SlideSearcher(index)


@pytest.mark.parametrize("tissue", ["necrosis", "mucin", "lymphocytes", "tumour"])
def test_text_query_ranks_slides_made_of_that_tissue_first(searcher, tissue):
    result = searcher.search_text(tissue, k=8)
    dominant = slides_with(tissue)
    assert set(result.slide_ids[: len(dominant)]) == dominant
    with_minor = slides_with(tissue, major=False)
    assert set(result.slide_ids[len(dominant): len(dominant) + len(with_minor)]) == with_minor
    top = result.hits[0]
    assert top.prototypes[0].name == tissue and top.prototypes[0].mass == pytest.approx(0.75, abs=0.02)
    assert top.patches and all(p.prototype == tissue and p.y + p.size <= BORDER for p in top.patches)


def test_fusion_scores_follow_the_documented_formula(searcher):
    result = searcher.search_text("necrosis", k=8)
    by_id = {h.slide_id: h.score for h in result.hits}
    # necrosis-dominant slides: presence 1, patches 1, abundance 0.75 → 0.4 + 0.4 + 0.2·0.75
    assert by_id["S03"] == pytest.approx(0.95, abs=0.01) and by_id["S04"] == pytest.approx(0.95, abs=0.01)
    assert result.details["fusion"] == {"w_proto": 0.4, "w_patch": 0.4, "w_mass": 0.2, "top_m": 3, "min_mass": 0.01}


def test_disease_name_is_expanded_with_its_attributes_and_can_be_switched_off(searcher):
    expanded = searcher.search_text("colloid carcinoma", k=2)
    assert expanded.details["expanded_with"] == "mucinous carcinoma"
    assert set(expanded.slide_ids) == slides_with("mucin")
    plain = searcher.search_text("colloid carcinoma", k=2, expand=False)
    assert plain.details["expanded_with"] is None


def test_indexed_slide_finds_itself_first_and_exclude_same_drops_its_patient(searcher):
    for slide in planted.COHORT:
        assert searcher.search_slide(slide, k=3).slide_ids[0] == slide
    result = searcher.search_slide("S03", k=8, exclude_same="patient_id")
    assert result.slide_ids and not {s for s in result.slide_ids if PATIENT[s] == "P2"}
    assert len(result.slide_ids) == 6
    # S03 (necrosis + stroma) shares only stroma with others: the explanation says so and shows the hit's stroma
    top = result.hits[0]
    assert top.prototypes[0].name == "stroma"
    in_stroma = (lambda p: p.y + p.size <= BORDER) if MAJOR[top.slide_id] == "stroma" else (lambda p: p.y >= BORDER)
    assert top.patches and all(p.prototype == "stroma" and in_stroma(p) for p in top.patches)
    scores = [p.score for p in top.patches]
    assert len(scores) <= 3 and scores == sorted(scores, reverse=True)
    mean = searcher.search_slide("S05", k=2, mode="mean")
    assert mean.slide_ids == ["S05", "S06"]


def test_new_slide_file_is_embedded_on_the_fly_without_touching_the_index(searcher, index, tmp_path):
    before = {p: p.read_bytes() for p in index.rglob("*") if p.is_file() and p.name != "LOCK"}
    path = write_slide(tmp_path / "new.tif", SyntheticSlideSpec(
        1024, 1024, (Region(0, 0, 1024, 1024, "necrosis"),), seed=42))
    result = searcher.search_slide(str(path), k=2)
    assert set(result.slide_ids) == slides_with("necrosis")
    assert {p: p.read_bytes() for p in index.rglob("*") if p.is_file() and p.name != "LOCK"} == before


def test_patch_queries_by_region_and_by_image_file(searcher, index, tmp_path):
    region = searcher.search_patch("S05@0,0,256,256", k=2)
    assert set(region.slide_ids) == slides_with("mucin")
    assert all(p.prototype == "mucin" for p in region.hits[0].patches)
    from indexer.slides import open_slide

    with open_slide(searcher.arrays.metadata[searcher.arrays.row_of("S07")]["path"]) as slide:
        slide.read_region((512, 256), 0, (256, 256)).save(tmp_path / "lymph.png")
    image = searcher.search_patch(str(tmp_path / "lymph.png"), k=4)
    assert set(image.slide_ids[:2]) == slides_with("lymphocytes")  # most of the slide is that tissue
    assert set(image.slide_ids[2:]) == slides_with("lymphocytes", major=False)


@pytest.mark.parametrize("where, expected", [
    ("organ = 'lymph node'", {"S07", "S08"}),
    ("patient_id IN ('P1', 'P3') AND label <> 'mucin'", {"S01", "S02"}),
    ("slide_id LIKE 'S0%' AND NOT (label = 'tumour')", {"S03", "S04", "S05", "S06", "S07", "S08"}),
])
def test_filters_restrict_every_query_kind_exactly(searcher, where, expected):
    for result in (
        searcher.search_text("stroma", k=8, where=where),
        searcher.search_slide("S01", k=8, where=where),
        searcher.search_patch("S01@0,0,256,256", k=8, where=where),
    ):
        assert set(result.slide_ids) <= expected
    assert set(searcher.search_slide("S01", k=8, where=where).slide_ids) == expected


@pytest.mark.parametrize("args, message", [
    (["text", "{index}", "   "], "empty text query"),
    (["slide", "{index}", "S99"], "unknown slide"),
    (["patch", "{index}", "{tmp}/notes.png"], "not a readable image"),
    (["patch", "{index}", "S01@1,2,three,4"], "malformed region"),
    (["patch", "{index}", "S01@0,0,99999,99999"], "outside slide"),
    (["text", "{index}", "tumour", "--where", "organ = 'lung'; DROP TABLE slides"], "only a boolean expression"),
    (["text", "{index}", "tumour", "--where", "colour = 'red'"], "colour"),
    (["text", "{index}", "tumour", "--where", "organ = "], "bad --where"),
    (["text", "{index}", "tumour", "--where", "(SELECT 1) = 1 UNION SELECT 2"], "bad --where"),
    (["slide", "{index}", "S01", "--exclude-same", "no_column"], "no such column"),
    (["slide", "{index}", "S01", "--mode", "median"], "unknown mode"),
    (["text", "/no/such/index", "tumour"], "no such index directory"),
])
def test_bad_queries_get_one_line_and_nonzero_exit(index, tmp_path, args, message):
    (tmp_path / "notes.png").write_text("this is not an image")
    args = [a.format(index=index, tmp=tmp_path) for a in args]
    result = CliRunner().invoke(app, ["search", *args])
    assert result.exit_code != 0
    assert message in one_error_line(result)


def test_cli_json_and_thumbnails(index, tmp_path):
    result = CliRunner().invoke(app, ["search", "text", str(index), "mucin", "-k", "2", "--json", "--thumbnails", str(tmp_path)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [h["slide_id"] for h in data["hits"]] == sorted(slides_with("mucin"), key=lambda s: s)[:2] or \
        {h["slide_id"] for h in data["hits"]} == slides_with("mucin")
    assert data["hits"][0]["metadata"]["patient_id"] == "P3" and data["hits"][0]["prototypes"][0]["name"] == "mucin"
    assert len(data["thumbnails"]) == 2
    for path in data["thumbnails"]:
        with Image.open(path) as img:
            assert img.format == "PNG" and max(img.size) <= 768
    table = CliRunner().invoke(app, ["search", "slide", str(index), "S07", "-k", "3", "--exclude-same", "patient_id"])
    assert table.exit_code == 0 and "S08" not in table.stdout and "rank" in table.stdout


def test_index_arrays_hold_the_patch_table_and_each_slides_block(searcher):
    arrays = searcher.arrays
    table = searcher.catalog.db.sql(
        "SELECT patch_row, slide_row, x, y, size, proto, proto_sim FROM patches ORDER BY patch_row").fetchnumpy()
    assert table["patch_row"].tolist() == list(range(len(arrays.patches)))
    assert arrays.patch_slide.tolist() == table["slide_row"].tolist()
    for field in ("x", "y", "size", "proto"):
        assert arrays.patches[field].tolist() == table[field].tolist()
    np.testing.assert_array_equal(arrays.patch_proto_sim, table["proto_sim"])
    first, second = arrays.row_of("S05"), arrays.row_of("S01")
    patch_rows = arrays.patch_rows_of(np.array([first, second, -1, 10**6]))  # unknown rows: no patches
    expected = [np.flatnonzero(table["slide_row"] == row) for row in (first, second)]
    assert patch_rows.tolist() == np.concatenate(expected).tolist()


def test_representative_patches_are_each_slides_best_of_each_prototype(searcher):
    arrays = searcher.arrays
    shown = arrays.representative_patches(2)
    assert shown.shape == (len(arrays.mass), arrays.n_prototypes, 2)
    for row in arrays.ids.values():
        own = arrays.patch_rows_of(np.array([row]))
        for proto in range(arrays.n_prototypes):
            mine = own[arrays.patch_proto[own] == proto]
            best = mine[np.argsort(-arrays.patch_proto_sim[mine], kind="stable")][:2].tolist()
            assert shown[row, proto].tolist() == best + [-1] * (2 - len(best))
    assert (shown >= 0).any() and (shown == -1).any()  # the planted slides miss some prototypes


def test_text_hits_explain_prototypes_with_exact_similarities(searcher):
    q, _ = embed_text_query(searcher.encoder, "necrosis", searcher.bank)
    arrays, kp = searcher.arrays, searcher.arrays.n_prototypes
    result = searcher.search_text_vector(q, k=8)
    assert len(result.hits) == 8
    for hit in result.hits:
        sub = vi.reconstruct(searcher.catalog.faiss("subvectors"), hit.slide_row * kp + np.arange(kp))
        cos = sub @ q / np.linalg.norm(sub, axis=1)
        present = np.flatnonzero(arrays.mass[hit.slide_row] >= 0.01)
        expected = present[np.argsort(-cos[present], kind="stable")][:3]
        assert [p.proto_id for p in hit.prototypes] == expected.tolist()
        np.testing.assert_allclose([p.similarity for p in hit.prototypes], cos[expected], atol=1e-4)


def test_text_hits_without_patch_evidence_show_their_representative_patches(index, monkeypatch):
    searcher = SlideSearcher(index)
    searched = image_source.nearest_patches

    def only_s01(index, q, k, allowed):
        sims, rows = searched(index, q, k, allowed)
        keep = searcher.arrays.patch_slide[rows] == searcher.arrays.row_of("S01")
        return sims[keep], rows[keep]

    monkeypatch.setattr(image_source, "nearest_patches", only_s01)
    q, _ = embed_text_query(searcher.encoder, "necrosis", searcher.bank)
    result = searcher.search_text_vector(q, k=8)
    necrotic = [h for h in result.hits if h.slide_id in slides_with("necrosis")]
    assert len(necrotic) == 2
    for hit in necrotic:  # no searched patch of theirs: their necrosis patches, scored against the query
        assert hit.patches and all(p.prototype == "necrosis" and p.y + p.size <= BORDER for p in hit.patches)
        rows = [p.patch_row for p in hit.patches]
        np.testing.assert_allclose([p.score for p in hit.patches],
                                   vi.reconstruct(searcher.catalog.faiss("patches"), np.array(rows)) @ q, atol=1e-5)
        assert [p.score for p in hit.patches] == sorted((p.score for p in hit.patches), reverse=True)
