"""`slidesearch serve` over the planted index: each endpoint against the library and the CLI, images, and refusals."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from benchmarks.fixtures import planted
from retrieval.cli import app as cli_app
from retrieval.query.results import result_json
from retrieval.search import SlideSearcher
from serving import app_client, get

BORDER = planted.SLIDE_PX * 3 // 4


@pytest.fixture(scope="module")
def index(planted_index):
    return planted_index[0]


@pytest.fixture(scope="module")
def server(index):
    with app_client(index) as client:
        yield client


def get_json(client, url, status=200, **params):
    response = get(client, url, status, **params)
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def png(response) -> Image.Image:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content))


def test_search_json_equals_the_cli_json_and_the_library(server, index):
    data = get_json(server, "/api/search/text", q="necrosis", k=3)
    cli = CliRunner().invoke(cli_app, ["search", "text", str(index), "necrosis", "-k", "3", "--json"])
    assert cli.exit_code == 0, cli.output
    assert data == json.loads(cli.stdout)
    assert [h["slide_id"] for h in data["hits"]][:2] in (["S03", "S04"], ["S04", "S03"])
    searcher = SlideSearcher(index)
    expected = json.loads(json.dumps(result_json(searcher.search_slide("S03", k=4, exclude_same="patient_id", mode="mean"))))
    assert get_json(server, "/api/search/slide", slide_id="S03", k=4, exclude_same="patient_id", mode="mean") == expected
    region = f"S05@0,0,{BORDER},{BORDER}"
    expected = json.loads(json.dumps(result_json(searcher.search_patch(region, k=4, where="organ = 'colon'"))))
    assert get_json(server, "/api/search/patch", region=region, k=4, where="organ = 'colon'") == expected
    assert {h["slide_id"] for h in expected["hits"][:2]} == {"S05", "S06"}  # mucin


def test_searches_say_how_long_the_search_took(server):
    for url, params in (("/api/search/slide", {"slide_id": "S01", "k": 5}), ("/api/search/text", {"q": "mucin"})):
        response = server.get(url, params=params)
        assert response.status_code == 200 and float(response.headers["server-timing"].split("dur=")[1]) > 0


def test_region_query_can_exclude_its_own_slide_and_patient(server):
    hits = get_json(server, "/api/search/patch", region="S05@0,0,512,512", k=8, exclude_same="patient_id")["hits"]
    assert hits and not {h["slide_id"] for h in hits} & {"S05", "S06"}  # patient P3


def test_uploaded_patch_finds_slides_of_its_tissue(server, planted_index):
    cohort = planted_index[1]
    with Image.open(cohort / "S07.tiff") as slide:
        crop = slide.convert("RGB").crop((0, 0, 512, 512))
    buffer = io.BytesIO()
    crop.save(buffer, "PNG")
    response = server.post("/api/search/patch", params={"k": 2}, files={"image": ("lymph.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["kind"] == "patch" and data["query"] == "lymph.png"
    assert {h["slide_id"] for h in data["hits"]} == {"S07", "S08"}  # lymphocyte-dominant


def test_slide_detail_explains_a_hit(server):
    detail = get_json(server, "/api/slides/S03", kind="text", q="necrosis")
    assert detail["metadata"]["label"] == "necrosis" and detail["dimensions"] == [2048, 2048]
    hit = detail["hit"]
    assert hit["slide_id"] == "S03" and hit["prototypes"][0]["name"] == "necrosis"
    assert all(p["y"] + p["size"] <= BORDER for p in hit["patches"])
    assert get_json(server, "/api/slides/S03")["hit"] is None


def test_thumbnail_crop_and_deepzoom_tiles(server):
    thumb = png(server.get("/api/slides/S01/thumbnail.png", params={"max_px": 128}))
    assert max(thumb.size) == 128
    crop = server.get("/api/slides/S01/region.jpeg", params={"x": 0, "y": 0, "w": 256, "h": 256, "max_px": 64})
    assert crop.status_code == 200 and Image.open(io.BytesIO(crop.content)).size == (64, 64)
    dzi = server.get("/api/slides/S01/image.dzi")
    assert dzi.status_code == 200 and 'Width="2048" Height="2048"' in dzi.text and 'TileSize="254"' in dzi.text
    top = server.get("/api/slides/S01/image_files/12/0_0.jpeg")  # 2048 px = DeepZoom level 11; 12 does not exist
    assert top.status_code == 400 and "does not exist" in top.json()["error"]
    tile = server.get("/api/slides/S01/image_files/11/3_5.jpeg")
    assert tile.status_code == 200 and tile.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(tile.content)).size == (256, 256)  # 254 + overlap on both sides
    assert server.get("/api/slides/S01/image_files/11/9_0.jpeg").status_code == 400


def test_heatmap_covers_the_slide_and_is_hot_where_the_tissue_is(server):
    image = png(server.get("/api/slides/S03/heatmap.png", params={"kind": "text", "q": "necrosis"}))
    assert image.mode == "RGBA" and image.size == (1024, 1024)
    rgba = np.asarray(image)
    border = int(1024 * 3 / 4)
    top, bottom = rgba[: border - 4], rgba[border + 4:]
    assert top[..., 3].min() > bottom[..., 3].max()  # necrosis above the border, stroma below
    assert top[..., 0].mean() > 200 and bottom[..., 2].mean() > 200  # red (hot) over blue (cold)
    for kind, q in (("slide", "S04"), ("patch", "S03@0,0,256,256")):
        assert png(server.get("/api/slides/S03/heatmap.png", params={"kind": kind, "q": q})).size == (1024, 1024)


def test_info_health_and_the_openapi_schema(server):
    info = get_json(server, "/api/info")
    assert info["counts"]["slides_ok"] == 8 and info["served"]["encoder"] == "planted"
    assert get_json(server, "/api/health") == {"status": "ok", "version": info["version"]}
    schema = get_json(server, "/openapi.json")
    assert {"/api/search/text", "/api/search/slide", "/api/search/patch", "/api/slides/{slide_id}/heatmap.png",
            "/api/slides/{slide_id}/image.dzi"} <= set(schema["paths"])
    assert server.get("/docs").status_code == 200
    page = server.get("/")
    assert page.status_code == 200 and "openseadragon" in page.text
    assert server.get("/vendor/openseadragon/openseadragon.min.js").status_code == 200


@pytest.mark.parametrize("url, params, status, needle", [
    ("/api/search/text", {"q": "x", "where": "organ = "}, 400, "bad --where"),
    ("/api/search/text", {"q": "x", "where": "(SELECT 1) = 1"}, 400, "bad --where"),
    ("/api/search/text", {"q": "x", "k": 0}, 422, "k"),
    ("/api/search/text", {"q": "x", "exclude_same": "patient_id"}, 400, "exclude_same"),
    ("/api/search/text", {"q": "x", "mode": "mean"}, 400, "mode"),
    ("/api/search/slide", {"slide_id": "nope"}, 404, "unknown slide"),
    ("/api/search/slide", {"slide_id": "S01", "exclude_same": "nope"}, 400, "no such column"),
    ("/api/search/slide", {"slide_id": "a\x00b"}, 400, "invalid slide id"),
    ("/api/search/patch", {"region": "S01@0,0,0,5"}, 400, "malformed region"),
    ("/api/search/patch", {"region": "nope@0,0,5,5"}, 404, "unknown slide"),
    ("/api/search/patch", {"region": "S01@2000,0,500,500"}, 400, "outside"),
    ("/api/slides/nope/thumbnail.png", {}, 404, "unknown slide"),
    ("/api/slides/S01/heatmap.png", {"kind": "slide", "q": "nope"}, 404, "unknown slide"),
    ("/api/nothing", {}, 404, "Not Found"),
])
def test_bad_requests_get_one_json_error(server, url, params, status, needle):
    response = server.get(url, params=params)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert needle in error and "Traceback" not in response.text


def test_no_query_reaches_a_file_by_its_path(server, planted_index):
    slide_file = str(planted_index[1] / "S01.tiff")  # a real slide, but named by path: never opened
    assert server.get("/api/search/slide", params={"slide_id": slide_file}).status_code == 400  # '/' is no id
    assert server.get("/api/search/patch", params={"region": slide_file}).status_code == 400
    assert server.get("/api/slides/..%2F..%2Fetc%2Fpasswd/thumbnail.png").status_code in (400, 404)
    assert server.get("/static/../app.py").status_code == 404
    assert server.post("/api/search/slide").status_code == 405


def test_uploads_over_the_byte_or_pixel_limit_get_413(server, monkeypatch):
    big = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    buffer = io.BytesIO()
    big.save(buffer, "PNG")
    monkeypatch.setenv("SLIDESEARCH_MAX_QUERY_PIXELS", str(200 * 200))
    response = server.post("/api/search/patch", files={"image": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413 and "over the limit" in response.json()["error"]
    monkeypatch.delenv("SLIDESEARCH_MAX_QUERY_PIXELS")
    monkeypatch.setenv("SLIDESEARCH_MAX_QUERY_BYTES", "1000")
    buffer = io.BytesIO()
    big.crop((0, 0, 60, 60)).save(buffer, "PNG")  # ~10 kB: over the image limit, within the body's slack
    response = server.post("/api/search/patch", files={"image": ("big.png", buffer.getvalue(), "image/png")})
    assert response.status_code == 413 and "1,000 bytes" in response.json()["error"]
    head = b'--x\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n'
    huge = head + b"\0" * (2 << 20)  # over the limit plus the multipart slack, streamed without a length
    response = server.post("/api/search/patch", content=iter([huge[i:i + 65536] for i in range(0, len(huge), 65536)]),
                           headers={"content-type": "multipart/form-data; boundary=x"})
    assert response.status_code == 413 and "request body" in response.json()["error"]
    monkeypatch.delenv("SLIDESEARCH_MAX_QUERY_BYTES")
    response = server.post("/api/search/patch", files={"image": ("x.png", b"not an image", "image/png")})
    assert response.status_code == 400 and "not a readable image" in response.json()["error"]


def test_cors_is_off_by_default(server):
    response = server.get("/api/health", headers={"Origin": "http://elsewhere.example"})
    assert "access-control-allow-origin" not in response.headers


def test_text_encoding_is_batched_across_concurrent_callers():
    import threading

    from retrieval.serve.batching import TextBatcher

    class Slow:
        name, calls = "slow", []

        def encode_text(self, texts):
            self.calls.append(len(texts))
            threading.Event().wait(0.05)
            return np.arange(len(texts), dtype=np.float32)[:, None] + np.zeros((1, 4), np.float32)

    batcher = TextBatcher(Slow())
    results = [None] * 9
    threads = [threading.Thread(target=lambda i=i: results.__setitem__(i, batcher.encode_text([str(i)] * 2)))
               for i in range(9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.shape == (2, 4) for r in results) and batcher.texts == 18
    assert batcher.batches < 9 and max(Slow.calls) > 2 and batcher.name == "slow"


def test_serve_binds_loopback_and_refuses_an_exposed_bind_without_a_token(index, monkeypatch, tmp_path):
    import uvicorn

    bound = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda self: bound.append((self.config.host, self.config.port)))
    monkeypatch.setattr("retrieval.commands.serve.one_thread_per_request", lambda: None)  # keeps this process's env
    monkeypatch.delenv("SLIDESEARCH_TOKEN", raising=False)
    result = CliRunner().invoke(cli_app, ["serve", str(index), "--port", "8123"])
    assert result.exit_code == 0, result.output
    assert bound[-1] == ("127.0.0.1", 8123) and "http://127.0.0.1:8123/" in result.stderr
    result = CliRunner().invoke(cli_app, ["serve", str(index), "--host", "0.0.0.0"])
    assert result.exit_code != 0 and len(bound) == 1 and "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--host 0.0.0.0" in lines[0] and "--token-file" in lines[0]
    token = tmp_path / "token"
    token.write_text("s3cret-token-value\n")
    result = CliRunner().invoke(cli_app, ["serve", str(index), "--host", "0.0.0.0", "--token-file", str(token)])
    assert result.exit_code == 0 and bound[-1][0] == "0.0.0.0" and "token required" in result.stderr
    monkeypatch.setenv("SLIDESEARCH_TOKEN", "short")
    result = CliRunner().invoke(cli_app, ["serve", str(index), "--host", "0.0.0.0"])
    assert result.exit_code != 0 and "SLIDESEARCH_TOKEN: the token must be at least 8" in result.stderr
    help_text = CliRunner().invoke(cli_app, ["serve", "--help"]).stdout
    for option in ("--host", "--port", "--token-file", "--allowed-host", "--audit-log", "--memory-budget", "--queue"):
        assert option in help_text


@pytest.mark.parametrize("fmt", ["png", "svs"])
def test_deepzoom_and_crops_of_other_formats(make_slide, fmt):
    from openslide.deepzoom import DeepZoomGenerator  # noqa: F401 - the generator the server wraps

    from retrieval.serve.images import SlideImages

    path = make_slide(width=1024, height=768, fmt=fmt)
    images, meta = SlideImages(), {"path": str(path), "mpp": 0.25}
    assert 'Width="1024" Height="768"' in images.dzi(meta)
    tile = Image.open(io.BytesIO(images.tile(meta, 10, 1, 1)))  # level 10 = full size; tiles of 254 + overlap
    assert tile.size == (256, 256) and np.asarray(tile).std() > 1  # tissue, not a blank tile
    assert Image.open(io.BytesIO(images.crop(meta, 0, 0, 512, 512, 64))).size == (64, 64)
    assert max(Image.open(io.BytesIO(images.thumbnail(meta, 100))).size) == 100
