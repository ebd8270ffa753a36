"""The page in real headless Chromium (Debian's package): text search → cards, viewer tiles, heatmap, region query, URL state."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from serving import running

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def browser_context():
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is not installed (scripts/env.sh installs Debian's chromium when run as root)")
    sync_api = pytest.importorskip("playwright.sync_api")
    profile = tempfile.mkdtemp(prefix="slidesearch-chromium-")
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(profile, executable_path=str(CHROMIUM), headless=True,
                                                        args=FLAGS, viewport={"width": 1400, "height": 900})
        try:
            yield context
        finally:
            context.close()
            shutil.rmtree(profile, ignore_errors=True)


def test_search_open_heatmap_and_region_query_in_the_page(planted_index, browser_context, tmp_path):
    from retrieval.serve.app import NODE_MODULES, create_app

    assert (NODE_MODULES / "openseadragon").is_dir(), f"no OpenSeadragon in {NODE_MODULES}: run `npm ci` (scripts/env.sh does)"

    with running(create_app(planted_index[0])) as base:
        page = browser_context.new_page()
        outside = []
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith((base, "data:", "blob:")) else None)
        tiles = []
        page.on("response", lambda r: tiles.append(r.status) if "/image_files/" in r.url else None)
        page.goto(base + "/")
        page.fill("#q", "necrosis")
        page.fill("#where", "organ = ")
        page.click("#go")
        page.wait_for_selector("#where-error:not([hidden])")
        assert "bad --where" in page.text_content("#where-error")
        page.fill("#where", "")
        page.fill("#k", "4")
        page.click("#go")
        page.wait_for_function("document.querySelectorAll('.card').length === 4")
        first = page.locator(".card").first
        assert first.get_attribute("data-slide-id") in ("S03", "S04")
        assert page.locator(".card .thumb").count() == 4 and page.locator(".crops img").count() >= 4

        with page.expect_response(lambda r: "/image_files/" in r.url) as tile:
            first.click()
        assert tile.value.status == 200
        page.wait_for_selector(".patch-outline", state="attached")
        page.wait_for_timeout(500)
        assert tiles and all(s == 200 for s in tiles)

        with page.expect_response(lambda r: "/heatmap.png" in r.url) as heat:
            page.check("#heatmap")
        assert heat.value.status == 200 and heat.value.headers["content-type"] == "image/png"
        page.wait_for_function("document.querySelector('#heat-range').textContent.includes('similarity')")
        assert "heat=1" in page.url and "open=S0" in page.url

        page.click("#region-btn")
        box = page.locator("#osd").bounding_box()
        with page.expect_response(lambda r: "/api/search/patch" in r.url) as region:
            page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] * 0.3)
        assert region.value.status == 200
        page.wait_for_function("new URLSearchParams(location.search).get('mode') === 'patch'")
        page.wait_for_selector(".card")
        query = page.evaluate("new URLSearchParams(location.search).get('q')")
        assert query.startswith(first.get_attribute("data-slide-id") + "@")
        shot = tmp_path / "serve_page.png"
        page.screenshot(path=str(shot))
        assert shot.stat().st_size > 10_000
        if os.environ.get("SLIDESEARCH_SCREENSHOTS"):
            shutil.copy(shot, Path(os.environ["SLIDESEARCH_SCREENSHOTS"]) / shot.name)

        shared = browser_context.new_page()  # the URL alone reproduces the search
        shared.goto(page.url)
        shared.wait_for_selector(".card")
        assert shared.input_value("#q") == query and shared.locator(".card").count() == page.locator(".card").count()
        assert not outside, outside[:3]
