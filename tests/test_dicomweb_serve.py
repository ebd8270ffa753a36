"""Issue 24: `serve` shows DICOMweb slides like file slides (tiles, thumbnails, regions, heatmaps; tiles cached), and
matches go out as QuPath GeoJSON (`search … --geojson` and the page's per-card file, byte for byte the same)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from conftest import GRID_ALIGNED_REGIONS
from retrieval.demo.synthetic import SyntheticSlideSpec
from retrieval.demo.dicom import write_dicom_slide
from benchmarks.fixtures.orthanc import dicomweb_plugin, orthanc_binary, running_orthanc, running_proxy
from serving import running

pytestmark = pytest.mark.skipif(orthanc_binary() is None or dicomweb_plugin() is None,
                                reason="Orthanc and its DICOMweb plugin are not installed")

ARGS = ("--model", "tiny", "--mag", "10", "--patch", "64", "--workers", "0", "-q")
REGION = "SYN7@448,448,448,448"


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """SYN7 in Orthanc behind a bearer-token proxy, indexed over DICOMweb and from disk; both indexes served."""
    from typer.testing import CliRunner

    from retrieval.cli import app
    from retrieval.serve.app import create_app

    root = tmp_path_factory.mktemp("served")
    folder = write_dicom_slide(root / "disk" / "SYN7", SyntheticSlideSpec(2048, 1536, GRID_ALIGNED_REGIONS, mpp=0.25, seed=7))
    token = root / "token"
    token.write_text("serve-token")
    with running_orthanc(root / "orthanc") as orthanc, running_proxy(orthanc, "serve-token") as proxy:
        orthanc.upload(folder)
        runner = CliRunner()
        for source, out in ((f"dicomweb+{proxy.url}/dicom-web", root / "web"), (str(folder), root / "disk")):
            result = runner.invoke(app, ["index", source, "--out", str(out), *ARGS, "--dicomweb-token-file", str(token)])
            assert result.exit_code == 0, result.output
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("SLIDESEARCH_DICOMWEB_TOKEN_FILE", str(token))
            with running(create_app(root / "web", device="cpu")) as web, running(create_app(root / "disk", device="cpu")) as disk:
                yield {"web": web, "disk": disk, "proxy": proxy, "root": root}


def get(base: str, path: str, **params) -> httpx.Response:
    response = httpx.get(f"{base}{path}", params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response


@pytest.mark.parametrize("path,params", [
    ("/api/slides/SYN7/image.dzi", {}),
    ("/api/slides/SYN7/image_files/11/3_2.jpeg", {}),
    ("/api/slides/SYN7/image_files/7/0_0.jpeg", {}),
    ("/api/slides/SYN7/thumbnail.png", {"max_px": 256}),
    ("/api/slides/SYN7/region.jpeg", {"x": 448, "y": 448, "w": 448, "h": 448, "max_px": 128}),
    ("/api/slides/SYN7/heatmap.png", {"kind": "patch", "q": REGION}),
])
def test_a_dicomweb_slide_shows_exactly_as_the_same_dicom_from_disk(served, path, params):
    over_http, from_disk = get(served["web"], path, **params), get(served["disk"], path, **params)
    assert over_http.headers["content-type"] == from_disk.headers["content-type"]
    assert over_http.content == from_disk.content and len(over_http.content) > 100


def test_dicomweb_tiles_are_cached_and_the_cache_is_bounded(served, monkeypatch):
    from openslide.deepzoom import DeepZoomGenerator

    from retrieval.search import SlideSearcher
    from retrieval.serve.images import SlideImages

    made = []
    get_tile = DeepZoomGenerator.get_tile
    monkeypatch.setattr(DeepZoomGenerator, "get_tile", lambda self, level, address: made.append(address) or
                        get_tile(self, level, address))
    searcher = SlideSearcher(served["root"] / "web")
    meta = searcher.arrays.metadata[searcher.arrays.row_of("SYN7")]
    images, proxy = SlideImages(cached_images=4), served["proxy"]
    first = images.tile(meta, 10, 2, 1)
    before = proxy.forwarded
    assert images.tile(meta, 10, 2, 1) == first and made == [(2, 1)]  # the second answer came from the tile cache
    assert proxy.forwarded == before  # and nothing was asked of the archive
    for col in range(4):  # four other tiles push it out of a four-image cache
        images.tile(meta, 10, col, 2)
    assert images.tile(meta, 10, 2, 1) == first and made.count((2, 1)) == 2


def test_search_geojson_files_are_the_matched_patches_and_the_page_offers_the_same(served, run_cli, tmp_path):
    out = tmp_path / "geojson"
    result = run_cli("search", "patch", served["root"] / "web", REGION, "-k", "3", "--geojson", out, "--json")
    assert result.exit_code == 0, result.output
    answer = json.loads(result.stdout)
    assert answer["geojson"] == [str(out / "SYN7.geojson")] and [h["slide_id"] for h in answer["hits"]] == ["SYN7"]
    hit = answer["hits"][0]
    collection = json.loads((out / "SYN7.geojson").read_text())
    assert collection["type"] == "FeatureCollection" and collection["slide_id"] == "SYN7"
    assert len(collection["features"]) == len(hit["patches"]) > 0
    for order, (feature, patch) in enumerate(zip(collection["features"], hit["patches"]), start=1):
        x, y, s = patch["x"], patch["y"], patch["size"]
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "Polygon"
        assert feature["geometry"]["coordinates"] == [[[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]]
        props = feature["properties"]
        assert props["objectType"] == "annotation" and props["isLocked"] is True
        assert props["classification"]["name"] == patch["prototype"] and len(props["classification"]["color"]) == 3
        assert (props["score"], props["rank"], props["query"], props["prototype"]) == (
            patch["score"], hit["rank"], REGION, patch["prototype"])
        assert props["measurements"]["score"] == patch["score"] and props["patch_rank"] == order
    page = get(served["web"], "/api/slides/SYN7/matches.geojson", kind="patch", q=REGION, rank=hit["rank"])
    assert page.headers["content-type"] == "application/geo+json"
    assert 'filename="SYN7.geojson"' in page.headers["content-disposition"]
    assert page.content == (out / "SYN7.geojson").read_bytes()
    assert "matches.geojson" in httpx.get(f"{served['web']}/static/app.js", timeout=30).text


def test_the_geojson_route_refuses_bad_requests_as_json(served):
    response = httpx.get(f"{served['web']}/api/slides/NOPE/matches.geojson", params={"kind": "patch", "q": REGION})
    assert response.status_code == 404 and "unknown slide" in response.json()["error"]
    response = httpx.get(f"{served['web']}/api/slides/SYN7/matches.geojson", params={"kind": "text"})
    assert response.status_code == 422
