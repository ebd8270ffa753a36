"""Who may ask: the Host allow-list (DNS rebinding), the bearer token, security headers and the audit log."""

from __future__ import annotations

import io
import json
import socket
import time

import httpx
import pytest
from PIL import Image

from serving import running

TOKEN = "lab-token-0123456789"


@pytest.fixture(scope="module")
def guarded(planted_index, tmp_path_factory):
    """A server with a token, one extra allowed host and an audit log: (client without a token, base URL, log path)."""
    from retrieval.serve.app import create_app

    log = tmp_path_factory.mktemp("audit") / "audit.jsonl"
    app = create_app(planted_index[0], token=TOKEN, allowed_hosts=["slides.lab.example"], audit_log=log)
    with running(app) as base, httpx.Client(base_url=base, timeout=30) as client:
        yield client, base, log


def raw_get(base: str, path: str, host: bytes | None, extra: bytes = b"") -> tuple[int, bytes]:
    """A GET with exactly this Host header (None: none at all) over a raw socket: (status, body)."""
    port = int(base.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        head = b"GET " + path.encode() + b" HTTP/1.1\r\n" + (b"Host: " + host + b"\r\n" if host is not None else b"")
        s.sendall(head + extra + b"Connection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head[9:12]), body


@pytest.mark.parametrize("host", [b"evil.example", b"evil.example:8000", b"127.0.0.1.evil.example", b"localhost.evil",
                                  b"[::2]:80", b"", b"127.0.0.2", b"slides.lab.example.evil"])
def test_a_foreign_host_gets_400_json_on_every_path(guarded, host):
    _, base, _ = guarded
    for path in ("/api/info", "/api/health", "/", "/api/search/slide?slide_id=S01"):
        status, body = raw_get(base, path, host)
        assert status == 400 and "not served here" in json.loads(body)["error"], (host, path, body[:200])


def test_loopback_names_and_allowed_hosts_are_answered(guarded):
    _, base, _ = guarded
    for host in (b"localhost", b"LOCALHOST:8000", b"127.0.0.1", b"[::1]:9000", b"slides.lab.example", b"slides.lab.example:443"):
        assert raw_get(base, "/api/health", host)[0] == 200, host
    assert raw_get(base, "/api/health", None)[0] == 400  # no Host at all
    assert raw_get(base, "/api/health", b"localhost", b"Host: evil.example\r\n")[0] == 400  # two Hosts


def test_every_api_route_but_health_needs_the_token(guarded):
    client, _, _ = guarded
    assert client.get("/api/health").status_code == 200
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    for url in ("/api/info", "/api/search/text?q=necrosis", "/api/search/slide?slide_id=S01", "/api/slides/S01",
                "/api/slides/S01/thumbnail.png", "/api/slides/S01/image.dzi", "/api/slides/S01/image_files/11/0_0.jpeg",
                "/api/search/case?q=P1", "/api/nothing"):
        for headers in ({}, {"Authorization": "Bearer wrong-token-000"}, {"Authorization": TOKEN},
                        {"Authorization": f"Basic {TOKEN}"}, {"Authorization": f"Bearer {TOKEN}x"}):
            response = client.get(url, headers=headers)
            assert response.status_code == 401, (url, headers, response.text)
            assert "token" in response.json()["error"] and response.headers["www-authenticate"].startswith("Bearer")
        assert client.get(url, headers=bearer).status_code in (200, 404), url
    assert client.get("/api/search/text", params={"q": "necrosis"}, headers={"authorization": f"bearer {TOKEN}"}).status_code == 200
    upload = client.post("/api/search/patch", files={"image": ("p.png", b"x", "image/png")})
    assert upload.status_code == 401  # refused before the body is read
    page = client.get("/")  # the page is public: it asks for the token
    assert page.status_code == 200 and "token" in page.text


def test_security_headers(guarded):
    client, _, _ = guarded
    page = client.get("/")
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    api = client.get("/api/health")
    assert api.headers["x-content-type-options"] == "nosniff" and api.headers["x-frame-options"] == "DENY"
    assert api.headers["cache-control"] == "no-store" and api.headers["content-security-policy"].startswith("default-src 'none'")
    assert "server" not in api.headers  # no software banner


def test_audit_log_has_one_json_line_per_api_request_and_no_image_bytes(guarded):
    client, _, log = guarded
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    marker = "necrosis audit-marker"
    client.get("/api/search/text", params={"q": marker, "k": 2}, headers={**bearer, "X-Forwarded-For": "10.9.9.9"})
    client.get("/api/info")  # refused: no token
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 30, 90)).save(buffer, "PNG")
    image = buffer.getvalue()
    client.post("/api/search/patch", params={"k": 2}, headers=bearer, files={"image": ("secret-name.png", image, "image/png")})
    client.get("/api/slides/S01/image_files/11/0_0.jpeg", headers=bearer)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        lines = [json.loads(line) for line in log.read_text().splitlines()]
        if sum(1 for e in lines if e["kind"] == "tile") >= 1:
            break
        time.sleep(0.1)
    text = log.read_text()
    search = next(e for e in lines if e["query"] and e["query"].get("q") == marker)
    assert search["route"] == "/api/search/text" and search["kind"] == "text" and search["status"] == 200
    assert search["duration_ms"] > 0 and search["time"].endswith("+00:00") and search["client"] == "127.0.0.1"
    assert any(e["route"] == "/api/info" and e["status"] == 401 for e in lines)
    upload = [e for e in lines if e["kind"] == "patch-upload"][-1]
    assert upload["status"] == 200 and upload["query"] is None
    tile = [e for e in lines if e["kind"] == "tile"][-1]
    assert tile["slide_id"] == "S01" and tile["route"] == "/api/slides/{slide_id}/image_files/{level}/{col}_{row}.jpeg"
    assert "PNG" not in text and "secret-name" not in text and image[:64].hex() not in text
    assert not any(e["route"] == "/api/health" for e in lines)
