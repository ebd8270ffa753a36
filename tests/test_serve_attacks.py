"""Attacks on a real `slidesearch serve` process (127.0.0.1): a loaded server keeps answering health, an upload
flood stays within a memory bound, half-open and slow connections are closed, oversized heads are refused."""

from __future__ import annotations

import http.client
import socket
import threading
import time

import numpy as np
import pytest

from benchmarks.fixtures.clients import flood_images, multipart, rss_mb
from serving import serve_process

HEALTH_P99_S = 0.5
FLOOD_BOUND_MB = 1024


class Loop(threading.Thread):
    """A client on one keep-alive connection sending ``next_request()`` until ``stop``: statuses and latencies."""

    def __init__(self, port: int, next_request, stop: threading.Event):
        super().__init__(daemon=True)
        self.port, self.next_request, self.stop = port, next_request, stop
        self.statuses: list[int] = []
        self.seconds: list[float] = []
        self.retry_after: list[str] = []

    def run(self) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        i = 0
        while not self.stop.is_set():
            method, url, body, headers = self.next_request(i)
            i += 1
            start = time.perf_counter()
            try:
                conn.request(method, url, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.statuses.append(-1)
                continue
            self.seconds.append(time.perf_counter() - start)
            self.statuses.append(response.status)
            if response.status == 503:
                self.retry_after.append(response.getheader("Retry-After", ""))
            if response.getheader("Connection", "") == "close":
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        conn.close()


def get(url: str):
    return lambda i: ("GET", url(i) if callable(url) else url, None, {})


def health_probe(port: int, stop: threading.Event, every_s: float = 0.05) -> Loop:
    """Health and info in turn, every ``every_s``: neither may queue behind the load."""
    def request(i: int):
        time.sleep(every_s)
        return "GET", ("/api/health", "/api/info")[i % 2], None, {}

    return Loop(port, request, stop)


def run_load(port: int, clients: list, seconds: float) -> Loop:
    stop = threading.Event()
    probe = health_probe(port, stop)
    loops = [Loop(port, request, stop) for request in clients]
    for t in (*loops, probe):
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in (*loops, probe):
        t.join(90)
    return probe, loops


def port_of(base: str) -> int:
    return int(base.rsplit(":", 1)[1])


def test_health_stays_fast_while_regions_heatmaps_and_slide_queries_load_the_server(planted_index):
    """36 clients loading regions and heatmaps and 4 looping slide queries: health (and info) p99 within 0.5 s."""
    rng = np.random.default_rng(0)
    slides = [f"S0{i}" for i in range(1, 9)]

    def region(i, seed):  # a new rectangle each time: no cached crop
        x, y = (int(v) for v in np.random.default_rng(seed * 1000 + i).integers(0, 1500, 2))
        return f"/api/slides/{slides[(seed + i) % 8]}/region.jpeg?x={x}&y={y}&w=512&h=512&max_px=256"

    def heat(i, seed):
        kind, q = [("text", f"necrosis {i}"), ("slide", slides[i % 8]), ("patch", f"S05@{i % 900},0,256,256")][i % 3]
        return f"/api/slides/{slides[(seed + i) % 8]}/heatmap.png?kind={kind}&q={q.replace(' ', '+')}"

    clients = [get(lambda i, s=s: region(i, s)) for s in range(18)] + [get(lambda i, s=s: heat(i, s)) for s in range(18)]
    clients += [get(lambda i, s=s: f"/api/search/slide?slide_id={slides[(s + i) % 8]}&k={1 + int(rng.integers(20))}")
                for s in range(4)]
    with serve_process(planted_index[0]) as (base, _):
        probe, loops = run_load(port_of(base), clients, seconds=8.0)
    served = [s for t in loops for s in t.statuses]
    assert len(probe.seconds) >= 40 and set(probe.statuses) == {200}
    p99 = float(np.percentile(probe.seconds, 99))
    assert p99 <= HEALTH_P99_S, f"health p99 {p99:.3f} s over {len(probe.seconds)} probes"
    assert served.count(200) >= 100 and not [s for s in served if s not in (200, 503)], sorted(set(served))
    assert all(t.statuses.count(200) for t in loops[-4:])  # the slide queries were answered too


def test_upload_flood_stays_within_a_gigabyte_of_idle(planted_index):
    """24 clients posting 33.5-MP images for 12 s (16 a 17-MB JPEG, 8 a PNG bomb): peak RSS within 1 GB of idle;
    every answer is 200 or 503 with Retry-After; health keeps answering."""
    jpeg, png = flood_images()
    assert 15e6 < len(jpeg) < 19e6 and len(png) < 1e6
    forms = [multipart(jpeg, "field.jpg"), multipart(png, "bomb.png")]

    def upload(which):
        return lambda i: ("POST", "/api/search/patch?k=5", *forms[which])

    with serve_process(planted_index[0]) as (base, server):
        port = port_of(base)
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        for form in forms:  # one of each first: what an idle, warmed server holds
            conn.request("POST", "/api/search/patch?k=5", body=form[0], headers=form[1])
            response = conn.getresponse()
            assert response.status == 200, response.read()[:300]
            response.read()
        conn.close()
        idle = rss_mb(server.pid)
        with open(f"/proc/{server.pid}/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak (VmHWM) to now
        samples, stop = [], threading.Event()

        def sample() -> None:
            while not stop.wait(0.05):
                samples.append(rss_mb(server.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        probe, loops = run_load(port, [upload(0)] * 16 + [upload(1)] * 8, seconds=12.0)
        stop.set()
        sampler.join()
        peak = max(rss_mb(server.pid, "VmHWM"), *samples)
    statuses = [s for t in loops for s in t.statuses]
    assert peak - idle <= FLOOD_BOUND_MB, f"peak RSS {peak:.0f} MB, idle {idle:.0f} MB"
    assert statuses.count(200) >= 24 and not [s for s in statuses if s not in (200, 503)], sorted(set(statuses))
    retry = [r for t in loops for r in t.retry_after]
    assert all(r.isdigit() and int(r) >= 1 for r in retry)
    assert len(probe.seconds) >= 20 and set(probe.statuses) == {200}


def closed_within(sock: socket.socket, seconds: float) -> tuple[bool, bytes]:
    """Whether the server closes ``sock`` within ``seconds`` (and what it sent before)."""
    sock.settimeout(0.2)
    got, deadline = b"", time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except socket.timeout:
            continue
        except OSError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_half_open_slow_and_oversized_requests_are_closed(planted_index):
    """70 partial request lines, silent sockets, headers a byte at a time and a stalled body are all closed after
    the timeouts; a 100-KiB head gets 431; the server answers throughout."""
    with serve_process(planted_index[0], "--header-timeout", "1.5", "--body-timeout", "2") as (base, _):
        port = port_of(base)

        def connect(first: bytes = b"") -> socket.socket:
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            if first:
                s.sendall(first)
            return s

        partial = [connect(b"GET /api/info HT") for _ in range(70)]
        silent = [connect() for _ in range(5)]
        stalled = [connect(b"POST /api/search/patch HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                           b"boundary=x\r\nContent-Length: 100000\r\n\r\n--x\r\n") for _ in range(5)]
        slow = connect(b"GET /api/info HTTP/1.1\r\n")
        start = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/health")  # answered while 81 connections hang
        assert conn.getresponse().status == 200
        slow_closed = False
        while time.monotonic() - start < 4 and not slow_closed:  # a header line, byte by byte (slowloris)
            try:
                slow.sendall(b"X")
            except OSError:
                slow_closed = True
            time.sleep(0.1)
        assert slow_closed or closed_within(slow, 0.5)[0]
        results = [closed_within(s, 6 - (time.monotonic() - start)) for s in partial + silent + stalled]
        assert all(closed for closed, _ in results), sum(not c for c, _ in results)
        assert all(b"408" in sent.split(b"\r\n", 1)[0] and b'"error"' in sent for _, sent in results[:70])
        for s in (*partial, *silent, *stalled, slow):
            s.close()
        big = connect(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * (100 << 10) + b"\r\n\r\n")
        closed, sent = closed_within(big, 3)
        assert closed and sent.startswith(b"HTTP/1.1 431") and b"over the limit" in sent
        many = connect(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n" + b"X-A: b\r\n" * 20000 + b"\r\n")
        assert closed_within(many, 3)[1].startswith(b"HTTP/1.1 431")
        garbage = connect(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 not http\r\n\r\n")  # a TLS hello, say
        closed, sent = closed_within(garbage, 3)
        assert closed and sent.startswith(b"HTTP/1.1 400") and b'"error"' in sent
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        conn.request("GET", "/api/health")
        assert conn.getresponse().status == 200


@pytest.mark.parametrize("seconds", [1.0])
def test_idle_keep_alive_connections_are_closed(planted_index, seconds):
    with serve_process(planted_index[0], "--header-timeout", str(seconds)) as (base, _):
        s = socket.create_connection(("127.0.0.1", port_of(base)), timeout=5)
        s.sendall(b"GET /api/health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        closed, sent = closed_within(s, 8)  # uvicorn's keep-alive timeout (5 s) closes it after the answer
        assert closed and sent.startswith(b"HTTP/1.1 200")
        s.close()
