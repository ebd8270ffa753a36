"""Hostile requests against the real server: traversal, injection, resource abuse, bad uploads and malformed HTTP each
get one JSON error (never a 5xx, a traceback, a file's content or a hang), and the server answers afterwards."""

from __future__ import annotations

import io
import socket
import struct
import time
import zlib

import httpx
import pytest
from PIL import Image

from serving import running


@pytest.fixture(scope="module")
def base(planted_index):
    from retrieval.serve.app import create_app

    with running(create_app(planted_index[0])) as url:
        yield url


@pytest.fixture(scope="module")
def client(base):
    with httpx.Client(base_url=base, timeout=30) as c:
        yield c


def image_bytes(fmt: str, size=(64, 64), mode="RGB") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 120).save(buffer, fmt)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` × ``height`` px and whose data is a few bytes (a bomb by its header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


GETS = [
    ("/api/slides/..%2F..%2Fetc%2Fpasswd/thumbnail.png", {}, (400, 404)),
    ("/api/slides/%2e%2e/image.dzi", {}, (400, 404)),
    ("/api/slides/S01%00.svs/image.dzi", {}, (400, 404)),
    ("/api/search/slide", {"slide_id": "/etc/passwd"}, (400,)),
    ("/api/search/slide", {"slide_id": "../../../../etc/passwd"}, (400,)),
    ("/api/search/slide", {"slide_id": "S01' OR '1'='1"}, (404,)),
    ("/api/search/patch", {"region": "/etc/passwd@0,0,10,10"}, (400,)),
    ("/api/search/case", {"q": "/etc/passwd"}, (400,)),
    ("/api/search/report", {"text": "@/etc/passwd"}, (400,)),
    ("/api/slides/S01", {"kind": "slide", "q": "/etc/passwd"}, (400,)),
    ("/api/slides/S01/heatmap.png", {"kind": "patch", "q": "/etc/passwd"}, (400,)),
    ("/api/search/text", {"q": "x", "where": "1=1; DROP TABLE slides"}, (400,)),
    ("/api/search/text", {"q": "x", "where": "read_csv('/etc/passwd') IS NOT NULL"}, (400,)),
    ("/api/search/text", {"q": "x", "where": "slide_id IN (SELECT slide_id FROM slides)"}, (400,)),
    ("/api/search/text", {"q": "x", "where": "repeat('a', 1000000000) = 'a'"}, (400,)),
    ("/api/search/text", {"q": "x", "where": "x" * 3000}, (422,)),
    ("/api/search/text", {"q": "x" * 5000}, (422,)),
    ("/api/search/text", {"q": ""}, (422,)),
    ("/api/search/text", {"q": "x", "k": 10**12}, (422,)),
    ("/api/search/text", {"q": "x", "k": "1e3"}, (422,)),
    ("/api/search/text", {"q": "x", "has": ["a"] * 50}, (422,)),
    ("/api/search/slide", {"slide_id": "S01", "k": -1}, (422,)),
    ("/api/slides/S01/region.jpeg", {"x": 0, "y": 0, "w": 2**31, "h": 2**31}, (400,)),
    ("/api/slides/S01/region.jpeg", {"x": 2**40, "y": 0, "w": 5, "h": 5}, (422,)),
    ("/api/slides/S01/thumbnail.png", {"max_px": 100000}, (422,)),
    ("/api/slides/S01/image_files/99999999999999999999/0_0.jpeg", {}, (400,)),
    ("/api/slides/S01/image_files/-1/0_0.jpeg", {}, (400,)),
    ("/api/slides/S01/image_files/11/-5_0.jpeg", {}, (400,)),
    ("/static/..%2F..%2F..%2Fetc%2Fpasswd", {}, (404,)),
    ("/vendor/openseadragon/..%2F..%2F..%2F..%2Fetc%2Fpasswd", {}, (404,)),
]


@pytest.mark.parametrize("url, params, statuses", GETS)
def test_hostile_gets_get_one_json_error(client, url, params, statuses):
    response = client.get(url, params=params)
    assert response.status_code in statuses, (response.status_code, response.text[:300])
    assert "error" in response.json() or "detail" in response.json()
    assert "root:" not in response.text and "Traceback" not in response.text


UPLOADS = [
    ("bomb.png", png_claiming(100_000, 100_000), 413),
    ("bomb.png", png_claiming(2**31 - 1, 2**31 - 1), 413),
    ("text.png", b"hello, not an image", 400),
    ("empty.png", b"", 400),
    ("cut.png", image_bytes("PNG")[:60], 400),
    ("a.gif", image_bytes("GIF"), 400),
    ("a.eps", b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n", 400),
    ("a.svg", b"<svg xmlns='http://www.w3.org/2000/svg' width='10' height='10'/>", 400),
    ("../../etc/passwd", image_bytes("PNG"), 200),
    ("cmyk.jpg", image_bytes("JPEG", mode="CMYK"), 200),
    ("palette.png", image_bytes("PNG", mode="P"), 200),
    ("grey.tiff", image_bytes("TIFF", mode="L"), 200),
]


@pytest.mark.parametrize("name, data, status", UPLOADS)
def test_hostile_uploads(client, name, data, status):
    for url in ("/api/search/patch", "/api/slides/S01/heatmap.png"):
        response = client.post(url, files={"image": (name, data, "image/png")})
        assert response.status_code == status, (url, response.text[:300])
        if status != 200:
            assert response.json()["error"] and "Traceback" not in response.text


@pytest.mark.parametrize("kwargs, status", [
    ({"json": {"image": "x"}}, 422),
    ({"content": b"x=1", "headers": {"content-type": "application/x-www-form-urlencoded"}}, 422),
    ({"files": {"file": ("a.png", b"x", "image/png")}}, 422),
    ({"content": b"--b\r\nbroken", "headers": {"content-type": "multipart/form-data; boundary=b"}}, (400, 422)),
    ({"content": b"".join(b"--b\r\nContent-Disposition: form-data; name=\"f%d\"\r\n\r\nv\r\n" % i for i in range(1500))
      + b"--b--\r\n", "headers": {"content-type": "multipart/form-data; boundary=b"}}, (400, 422)),
])
def test_wrong_upload_bodies_are_refused_in_json(client, kwargs, status):
    response = client.post("/api/search/patch", **kwargs)
    assert response.status_code in (status if isinstance(status, tuple) else (status,)), response.text[:300]
    assert response.json()


def raw(base: str, request: bytes, read_s: float = 3.0) -> bytes:
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=read_s) as s:
        s.sendall(request)
        data = b""
        try:
            while chunk := s.recv(65536):
                data += chunk
        except (socket.timeout, ConnectionResetError):
            pass
    return data


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -5\r\n\r\n", b"400"),
    (b"POST /api/search/patch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", b"400"),
    (b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header: x\r\n\r\n", b"400"),
    (b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX: a\rb\r\n\r\n", b"400"),
    (b"GET http://evil.example/api/info HTTP/1.1\r\nHost: evil.example\r\n\r\n", b"400"),
    (b"GET /api/info HTTP/1.0\r\n\r\n", b"400"),
    (b"POST /api/search/patch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 999999999999\r\n\r\n", b"413"),
    (b"DELETE /api/info HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", b"405"),
    (b"TRACE / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n", b"405"),
    (b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", b"200"),
])
def test_malformed_http_gets_a_json_error(base, request_bytes, status):
    answer = raw(base, request_bytes)
    assert answer.split(b"\r\n", 1)[0].split(b" ")[1] == status, answer[:300]
    head, _, body = answer.partition(b"\r\n\r\n")
    assert b"application/json" in head.lower() and (status == b"200" or b'"error"' in body)


def test_pipelined_requests_are_answered_in_order(base):
    request = b"GET /api/search/slide?slide_id=S0%d&k=1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    answer = raw(base, b"".join(request % i for i in range(1, 6)) + b"GET /api/health HTTP/1.1\r\nHost: x.evil\r\n\r\n")
    assert answer.count(b"HTTP/1.1 200") == 5 and answer.count(b"HTTP/1.1 400") == 1
    firsts = [answer.find(b'"query":"S0%d"' % i) for i in range(1, 6)]
    assert all(f > 0 for f in firsts) and firsts == sorted(firsts)


def test_no_cors_for_other_origins_and_server_still_answers(client):
    response = client.options("/api/search/text?q=x", headers={"Origin": "http://evil.example",
                                                                  "Access-Control-Request-Method": "GET"})
    assert "access-control-allow-origin" not in response.headers
    assert client.get("/api/health").json()["status"] == "ok"


def test_large_bodies_in_flight_are_bounded(base, client, monkeypatch):
    monkeypatch.setattr("retrieval.serve.app.MAX_BODIES", 1)
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as slow:  # an upload that has not finished
        slow.sendall(b"POST /api/search/patch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                     b"boundary=b\r\nContent-Length: 2000000\r\n\r\n--b\r\n")
        time.sleep(0.3)
        second = client.post("/api/search/patch", files={"image": ("p.png", image_bytes("PNG", (900, 900)) + b"\0" * 1_200_000,
                                                                   "image/png")})
        assert second.status_code == 503 and second.headers["retry-after"] == "2" and "uploads" in second.json()["error"]
        small = client.post("/api/search/patch", files={"image": ("p.png", image_bytes("PNG"), "image/png")})
        assert small.status_code == 200  # a small body is not counted
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # the slow upload's slot is given back once its connection is gone
        big = client.post("/api/search/patch", files={"image": ("p.png", image_bytes("PNG", (900, 900)) + b"\0" * 1_200_000,
                                                                "image/png")})
        if big.status_code != 503:
            break
        time.sleep(0.2)
    assert big.status_code in (200, 400), big.text
