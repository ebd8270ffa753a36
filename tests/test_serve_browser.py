"""The page in real headless Chromium (Debian's package), against a server that needs a token: the token asked once per
tab, text search → cards (user metadata first, technical folded), viewer tiles and heatmap fetched with the token,
region query, case mode (slides by stain), report mode (the sentence), CSV download, URL state."""

from __future__ import annotations

import csv
import json
import io
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from serving import make_lab_index, running

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
TOKEN = "browser-token-4242"


@pytest.fixture(scope="module")
def browser_context():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/env.sh installs Debian's chromium when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="slidesearch-chromium-")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True, args=FLAGS,
                                                        viewport={"width": 1400, "height": 900}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def site(planted_index, tmp_path_factory):
    from retrieval.serve.app import create_app, viewer_folder

    assert viewer_folder() is not None, "no OpenSeadragon: run `npm ci` (scripts/env.sh does)"
    with running(create_app(make_lab_index(planted_index, tmp_path_factory.mktemp("lab")), token=TOKEN)) as base:
        yield base


def open_page(browser_context, base, outside: list, statuses: dict):
    page = browser_context.new_page()
    page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "data:", "blob:")) else None)
    page.on("response", lambda r: statuses.setdefault(r.url.split("?")[0].split("/api/")[-1].split("/")[-1], []).append(r.status))
    return page


def give_token(page):
    page.wait_for_selector("#token-form:not([hidden])")
    page.fill("#token", TOKEN)
    page.click("#token-form button")
    page.wait_for_function("() => document.querySelector('#index-info').textContent.includes('slides')")


def search(page, k: int, card: str = ".card") -> None:
    """Submit the form with ``k`` and wait for ``k`` result cards."""
    page.fill("#k", str(k))
    page.click("#go")
    page.wait_for_function(f"() => document.querySelectorAll('{card}').length === {k}")


def shot(page, tmp_path, name):
    path = tmp_path / name
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    if os.environ.get("SLIDESEARCH_SCREENSHOTS"):
        shutil.copy(path, Path(os.environ["SLIDESEARCH_SCREENSHOTS"]) / name)


def test_text_search_viewer_heatmap_and_region_query_with_a_token(site, browser_context, tmp_path):
    outside, statuses = [], {}
    page = open_page(browser_context, site, outside, statuses)
    page.goto(site + "/")
    give_token(page)
    assert "reports indexed" in page.text_content("#index-info")
    page.fill("#q", "necrosis")
    page.fill("#where", "organ = ")
    page.click("#go")
    page.wait_for_selector("#where-error:not([hidden])")
    assert "bad --where" in page.text_content("#where-error")
    page.fill("#where", "")
    search(page, 4)
    first = page.locator(".card").first
    opened = first.get_attribute("data-slide-id")
    assert opened in ("S03", "S04")
    assert "ecrosis" in first.locator(".report").inner_text() and first.locator(".report mark").count() >= 1
    labels = first.locator("dl").first.locator("dt").all_inner_texts()
    assert labels[:3] == ["label", "patient_id", "case_id"] and "width" not in labels and "vendor" not in labels
    technical = first.locator("details.technical")
    assert technical.get_attribute("open") is None and "width" in technical.locator("dt").all_text_contents()
    page.wait_for_function("() => [...document.querySelectorAll('.card .thumb')].every(i => i.complete && i.naturalWidth > 0)")
    assert page.eval_on_selector(".card .thumb", "i => i.src").startswith("blob:")  # fetched with the token
    with page.expect_download() as geojson:  # the card's QuPath file, fetched with the token
        first.locator("a.geojson").click()
    collection = json.loads(Path(geojson.value.path()).read_text())
    assert geojson.value.suggested_filename == f"{opened}.geojson" and collection["type"] == "FeatureCollection"
    assert collection["features"] and all(f["properties"]["objectType"] == "annotation" for f in collection["features"])
    assert page.text_content("#viewer-title") != opened  # the link does not open the viewer

    with page.expect_response(lambda r: "/image_files/" in r.url) as tile:
        first.locator("h3").click()
    assert tile.value.status == 200
    page.wait_for_selector(".patch-outline", state="attached")
    page.wait_for_timeout(500)
    assert statuses.get("image.dzi") == [200] and all(s == 200 for k, v in statuses.items() if k.endswith(".jpeg") for s in v)
    with page.expect_response(lambda r: "/heatmap.png" in r.url) as heat:
        page.check("#heatmap")
    assert heat.value.status == 200 and heat.value.headers["content-type"] == "image/png"
    page.wait_for_function("() => document.querySelector('#heat-range').textContent.includes('similarity')")
    assert "heat=1" in page.url and "open=S0" in page.url

    page.click("#region-btn")
    box = page.locator("#osd").bounding_box()
    with page.expect_response(lambda r: "/api/search/patch" in r.url) as region:
        page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.3)
    assert region.value.status == 200
    page.wait_for_function("() => new URLSearchParams(location.search).get('mode') === 'patch'")
    page.wait_for_selector(".card")
    query = page.evaluate("new URLSearchParams(location.search).get('q')")
    assert query.startswith(opened + "@") and page.text_content("#viewer-title") == opened
    shot(page, tmp_path, "serve_page.png")

    shared = open_page(browser_context, site, outside, {})  # another tab: the URL reproduces the search, after the token
    shared.goto(page.url)
    give_token(shared)
    shared.wait_for_selector(".card")
    assert shared.input_value("#q") == query and shared.locator(".card").count() == page.locator(".card").count()
    assert 401 not in statuses.get("info", []) or statuses["info"].count(200) >= 1
    assert not outside, outside[:3]


def test_case_and_report_modes_and_the_csv_download(site, browser_context, tmp_path):
    outside = []
    page = open_page(browser_context, site, outside, {})
    page.goto(site + "/")
    give_token(page)
    page.check("input[name=mode][value=case]")
    assert page.is_visible("#fusion") and not page.is_visible("#source")
    page.fill("#q", "P1")
    search(page, 3, ".card.case")
    card = page.locator(".card.case").first
    rows = card.locator(".stain-row")
    assert sorted(rows.locator(".stain").all_inner_texts()) == ["H&E", "IHC"]
    assert card.locator(".case-slide").count() == 2 and card.locator(".case-slide.matched").count() == 1
    assert "like case P1" in page.text_content("#results-about")
    ihc = card.locator(".stain-row", has_text="IHC").locator(".case-slide")
    with page.expect_response(lambda r: "/image.dzi" in r.url) as dzi:
        ihc.click()
    assert dzi.value.status == 200 and page.text_content("#viewer-title") == ihc.get_attribute("data-slide-id")
    shot(page, tmp_path, "serve_case_mode.png")

    with page.expect_download() as cases_csv:
        page.click("#csv")
    table = list(csv.DictReader(io.StringIO(Path(cases_csv.value.path()).read_text())))
    assert cases_csv.value.suggested_filename == "slidesearch-case.csv"
    assert len(table) == 3 and list(table[0])[:4] == ["rank", "case_id", "slide_id", "score"]

    page.check("input[name=mode][value=report]")
    assert page.is_visible("#report") and not page.is_visible("#q")
    page.fill("#report", "Sheets of necrosis.\nNo mucin is seen.")
    search(page, 4)
    about = page.text_content("#results-about")
    assert "necrosis" in about and "left out" in about and "mucin" in about
    first = page.locator(".card").first
    assert first.get_attribute("data-slide-id") in ("S03", "S04")
    assert "necrosis" in first.locator(".report-attributes").inner_text()
    assert "ecrosis" in first.locator(".report").inner_text()  # the slide's own report sentence
    assert page.evaluate("new URLSearchParams(location.search).get('mode')") == "report"
    shot(page, tmp_path, "serve_report_mode.png")

    with page.expect_download() as report_csv:
        page.click("#csv")
    table = list(csv.DictReader(io.StringIO(Path(report_csv.value.path()).read_text())))
    assert len(table) == 4 and table[0]["slide_id"] == first.get_attribute("data-slide-id")
    assert "necrosis" in table[0]["report_attributes"] and table[0]["label"]
    assert not outside, outside[:3]
