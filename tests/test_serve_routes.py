"""The whole query surface over HTTP: case and report routes, slide options and text with reports answer exactly
what the CLI's `--json` prints; `format=csv` on every search route; their refusals are one JSON error."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from benchmarks.fixtures import planted  # noqa: F401 - registers the planted encoder
from retrieval.cli import app as cli_app
from serving import app_client, get, make_lab_index


def cli_json(*args) -> dict:
    result = CliRunner().invoke(cli_app, [str(a) for a in args] + ["--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def lab_index(planted_index, tmp_path_factory):
    return make_lab_index(planted_index, tmp_path_factory.mktemp("lab"))


@pytest.fixture(scope="module")
def client(lab_index):
    with app_client(lab_index) as c:
        yield c


@pytest.mark.parametrize("params, cli", [
    ({"q": "S01", "k": 3}, ["S01", "-k", "3"]),
    ({"q": "P2", "fusion": "concat", "k": 2}, ["P2", "--fusion", "concat", "-k", "2"]),
    ({"q": "S03", "target_stain": "IHC", "where": "organ = 'colon'"}, ["S03", "--target-stain", "IHC", "--where", "organ = 'colon'"]),
])
def test_case_route_equals_the_cli(client, lab_index, params, cli):
    data = get(client, "/api/search/case", **params).json()
    assert data == cli_json("search", "case", lab_index, *cli)
    assert data["kind"] == "case" and data["hits"] and all(h["stains"] for h in data["hits"])


def test_case_hits_list_their_slides_by_stain(client):
    hits = get(client, "/api/search/case", q="P1", k=3).json()["hits"]
    assert "P1" not in [h["case_id"] for h in hits]  # the query's own case is left out
    for hit in hits:
        assert set(hit["stains"]) == {"H&E", "IHC"} and sum(map(len, hit["stains"].values())) == 2


def test_slide_route_takes_group_space_and_target_stain_like_the_cli(client, lab_index):
    for params, cli in (({"group": "case", "k": 2}, ["--group", "case", "-k", "2"]),
                        ({"target_stain": "H&E"}, ["--target-stain", "H&E"]),
                        ({"space": "mean", "k": 4}, ["--space", "mean", "-k", "4"])):
        data = get(client, "/api/search/slide", slide_id="S02", **params).json()
        assert data == cli_json("search", "slide", lab_index, "S02", *cli)
    assert all(h["metadata"]["stain"] == "H&E" for h in get(client, "/api/search/slide", slide_id="S02",
                                                           target_stain="H&E").json()["hits"])


def test_report_route_get_and_post_equal_the_cli(client, lab_index):
    text = "Sheets of necrosis. No mucin is seen."
    expected = cli_json("search", "report", lab_index, text, "-k", "8")
    assert get(client, "/api/search/report", text=text, k=8).json() == expected
    posted = client.post("/api/search/report", params={"k": 8}, json={"text": text})
    assert posted.status_code == 200 and posted.json() == expected
    assert set(expected["details"]["attributes"]) >= {"necrosis"} and {h["slide_id"] for h in expected["hits"][:2]} == {"S03", "S04"}
    has = cli_json("search", "report", lab_index, text, "--has", "necrosis")
    assert get(client, "/api/search/report", text=text, has="necrosis").json() == has


def test_text_route_with_reports_equals_the_cli(client, lab_index):
    for params, cli in (({"q": "necrosis", "k": 3}, ["-k", "3"]), ({"q": "necrosis", "source": "report"}, ["--source", "report"]),
                        ({"q": "necrosis", "has": "not mucin"}, ["--has", "not mucin"])):
        data = get(client, "/api/search/text", **params).json()
        assert data == cli_json("search", "text", lab_index, "necrosis", *cli)
    assert get(client, "/api/search/text", q="necrosis", k=3).json()["hits"][0]["report"]["sentence"]


def rows(response) -> list[dict]:
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"].startswith("attachment; filename=\"slidesearch-")
    return list(csv.DictReader(io.StringIO(response.text)))


def test_every_search_route_answers_csv(client):
    text = get(client, "/api/search/text", q="necrosis", k=4, format="csv")
    table = rows(text)
    assert text.text.startswith("rank,slide_id,score,report_sentence,")
    as_json = get(client, "/api/search/text", q="necrosis", k=4).json()["hits"]
    assert [r["slide_id"] for r in table] == [h["slide_id"] for h in as_json] and table[0]["rank"] == "1"
    assert float(table[0]["score"]) == pytest.approx(as_json[0]["score"])
    assert table[0]["report_sentence"] == as_json[0]["report"]["sentence"] and table[0]["label"] == as_json[0]["metadata"]["label"]
    assert {"patient_id", "organ", "stain", "width", "mpp"} <= set(table[0])
    for url, params in (("/api/search/slide", {"slide_id": "S01"}), ("/api/search/patch", {"region": "S05@0,0,512,512"}),
                        ("/api/search/report", {"text": "necrosis present"})):
        table = rows(get(client, url, format="csv", k=5, **params))
        assert len(table) == 5 and list(table[0])[:3] == ["rank", "slide_id", "score"]
    cases = rows(get(client, "/api/search/case", q="P1", format="csv"))
    assert list(cases[0])[:5] == ["rank", "case_id", "slide_id", "score", "slides"] and cases[0]["slides"].count(":") == 2
    upload = client.post("/api/search/patch", params={"k": 3, "format": "csv"},
                         files={"image": ("p.png", png_bytes(), "image/png")})
    assert len(rows(upload)) == 3
    posted = client.post("/api/search/report", params={"format": "csv", "k": 2}, json={"text": "necrosis present"})
    assert len(rows(posted)) == 2


def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (220, 120, 160)).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.parametrize("method, url, kwargs, status, needle", [
    ("GET", "/api/search/case", {"params": {"q": "nobody"}}, 400, "unknown case or slide"),
    ("GET", "/api/search/case", {"params": {"q": "P1", "fusion": "sum"}}, 422, "fusion"),
    ("GET", "/api/search/case", {"params": {"q": "P1", "target_stain": "PAS"}}, 400, "target-stain"),
    ("GET", "/api/search/report", {"params": {"text": "No necrosis. Negative for mucin."}}, 400, "affirms no attribute"),
    ("GET", "/api/search/report", {"params": {"text": "x" * 9000}}, 422, "text"),
    ("POST", "/api/search/report", {"content": b"necrosis", "headers": {"content-type": "text/plain"}}, 422, ""),
    ("POST", "/api/search/report", {"json": {"text": ""}}, 422, "text"),
    ("GET", "/api/search/text", {"params": {"q": "x", "format": "xml"}}, 422, "format"),
    ("GET", "/api/search/text", {"params": {"q": "x", "has": "fibrosis"}}, 400, "--has"),
    ("GET", "/api/search/slide", {"params": {"slide_id": "S01", "group": "patient"}}, 422, "group"),
    ("GET", "/api/search/slide", {"params": {"slide_id": "S01", "space": "nope"}}, 400, "nope"),
    ("GET", "/api/search/slide", {"params": {"slide_id": "../S01", "group": "case"}}, 400, "invalid slide id"),
])
def test_bad_queries_get_one_json_error(client, method, url, kwargs, status, needle):
    response = client.request(method, url, **kwargs)
    assert response.status_code == status, response.text
    assert needle in response.json()["error"] and "Traceback" not in response.text


def test_csv_cells_cannot_run_as_spreadsheet_formulas():
    from retrieval.query.results import result_csv

    data = {"kind": "slide", "hits": [{"rank": 1, "slide_id": "=HYPERLINK(\"http://x\")", "score": -0.5,
                                       "metadata": {"label": "+1", "note": "@SUM(A1)", "n": 3}}]}
    row = next(csv.DictReader(io.StringIO(result_csv(data))))
    assert row == {"rank": "1", "slide_id": "'=HYPERLINK(\"http://x\")", "score": "-0.5", "label": "'+1",
                   "note": "'@SUM(A1)", "n": "3"}
