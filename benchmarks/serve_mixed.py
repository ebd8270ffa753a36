"""The mixed, concurrent level of ``benchmarks/serve.py --mixed``: searches, DeepZoom tiles, crops, heatmaps and
33.5-MP uploads at once against `slidesearch serve`, and a health probe beside them.

The index is the demo's cohort (``retrieval.demo``: synthetic slides of four diagnoses with reports), indexed with
``tiny`` and its ``report`` column, so tiles, crops and heatmaps read real pyramids. The server is the
`slidesearch serve` command in its own process, from this checkout or (``--baseline-src``) from another source
tree, e.g. ``git archive 0505daa`` unpacked, to measure the same load before a change. Clients are threads of this
process, each on one keep-alive ``http.client`` connection, looping their kind of request for ``--seconds``:

- search: a text (unique words), a slide and a region query in turn; slide-loop: slide queries (k ≤ 20);
- tile: a random DeepZoom tile of a random slide at one of its 4 finest levels; region: a random 512² crop;
- heatmap: a text or slide query's heatmap over a random slide; upload: a 33.5-MP, ~17-MB JPEG as a patch query;
- health: ``/api/health`` every 50 ms.

Reported per kind: requests answered, p50 and p99 (ms) of the answered ones, 503s (the budget's refusals) and other
failures; the server's RSS when idle (after a warm-up) and its peak over the level (``VmHWM``, reset at the start).
"""

from __future__ import annotations

import http.client
import math
import os
import subprocess
import sys
import threading
import time
import urllib.parse
from pathlib import Path

import numpy as np

from benchmarks.fixtures.clients import flood_images, free_port, multipart, rss_mb

MIX = {"search": 8, "slide-loop": 4, "tile": 12, "region": 6, "heatmap": 6, "upload": 4}
WORDS = ("adenocarcinoma", "necrosis", "stroma", "mucin", "lymphoid", "fat", "glands", "poorly", "differentiated")
TILE = 254


def demo_index(work: Path, patients: int, size: int) -> Path:
    """The demo cohort (``patients`` × 2 slides of ``size``² px) indexed with ``tiny`` and its reports, reused."""
    from indexer.ingestion.config import IndexConfig
    from indexer.ingestion.run import run_index
    from retrieval.demo import DemoConfig, prepare_cohort

    csv, _ = prepare_cohort(work, DemoConfig(patients=patients, size=size))
    report = run_index([csv.parent], work / "index", IndexConfig(model="tiny", num_workers=0), metadata_csv=csv,
                       show_progress=False, reports="report")
    if report.failed:
        raise SystemExit(f"indexing failed: {report.failed}")
    return work / "index"


def start_server(index: Path, port: int, source: Path | None) -> subprocess.Popen:
    """`slidesearch serve INDEX --port PORT` in its own process (the code of ``source`` when given)."""
    from benchmarks.common import ROOT, subprocess_env

    # `-c` puts its working directory first on sys.path: run in the checkout whose code is timed
    code = "import sys; from retrieval.cli import main; sys.argv = ['slidesearch', 'serve'] + sys.argv[1:]; main()"
    server = subprocess.Popen([sys.executable, "-c", code, str(index.resolve()), "--port", str(port)],
                              cwd=source or ROOT, env=subprocess_env(source or ROOT),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 600
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/api/health")
            if conn.getresponse().status == 200:
                return server
        except OSError:
            pass
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the server did not start")
        time.sleep(0.5)


class Workload:
    """The requests of each kind, drawn at random over the index's slides."""

    def __init__(self, slides: list[tuple[str, int, int, int]], upload: tuple[bytes, dict]):
        self.slides, self.upload = slides, upload  # (slide_id, width, height, patch size)

    def request(self, kind: str, rng: np.random.Generator, i: int) -> tuple[str, str, bytes | None, dict]:
        slide_id, width, height, patch = self.slides[int(rng.integers(len(self.slides)))]
        q = urllib.parse.quote
        if kind == "search":
            kind = ("text", "slide", "patch")[i % 3]
        if kind == "text":
            return "GET", f"/api/search/text?q={q(' '.join(rng.choice(WORDS, 3)))}+{int(rng.integers(1 << 30))}&k=10", None, {}
        if kind in ("slide", "slide-loop"):
            return "GET", f"/api/search/slide?slide_id={q(slide_id)}&k={1 + int(rng.integers(20))}", None, {}
        if kind == "patch":
            x, y = int(rng.integers(width - patch)), int(rng.integers(height - patch))
            return "GET", f"/api/search/patch?region={q(f'{slide_id}@{x},{y},{patch},{patch}')}&k=10", None, {}
        if kind == "tile":
            top = math.ceil(math.log2(max(width, height)))
            level = top - int(rng.integers(4))
            scale = 2 ** (top - level)
            cols, rows = math.ceil(math.ceil(width / scale) / TILE), math.ceil(math.ceil(height / scale) / TILE)
            col, row = int(rng.integers(cols)), int(rng.integers(rows))
            return "GET", f"/api/slides/{q(slide_id)}/image_files/{level}/{col}_{row}.jpeg", None, {}
        if kind == "region":
            x, y = int(rng.integers(width - 512)), int(rng.integers(height - 512))
            return "GET", f"/api/slides/{q(slide_id)}/region.jpeg?x={x}&y={y}&w=512&h=512&max_px=256", None, {}
        if kind == "heatmap":
            other = self.slides[int(rng.integers(len(self.slides)))][0]
            query = f"kind=text&q={q(str(rng.choice(WORDS)))}" if i % 2 else f"kind=slide&q={q(other)}"
            return "GET", f"/api/slides/{q(slide_id)}/heatmap.png?{query}", None, {}
        if kind == "upload":
            return "POST", "/api/search/patch?k=10", *self.upload
        return "GET", "/api/health", None, {}


class Client(threading.Thread):
    """One keep-alive connection looping one kind of request until ``stop``."""

    def __init__(self, port: int, kind: str, workload: Workload, seed: int, stop: threading.Event, pause_s: float = 0.0):
        super().__init__(daemon=True)
        self.port, self.kind, self.workload, self.stop, self.pause_s = port, kind, workload, stop, pause_s
        self.rng = np.random.default_rng(seed)
        self.seconds: list[float] = []
        self.busy = self.failed = 0

    def run(self) -> None:
        conn, i = None, 0
        while not self.stop.is_set():
            if self.pause_s:
                time.sleep(self.pause_s)
            method, url, body, headers = self.workload.request(self.kind, self.rng, i)
            i += 1
            start = time.perf_counter()
            try:
                conn = conn or http.client.HTTPConnection("127.0.0.1", self.port, timeout=120)
                conn.request(method, url, body=body, headers=headers)
                response = conn.getresponse()
                response.read()
            except (OSError, http.client.HTTPException):
                self.failed += 1
                conn = None
                continue
            if response.status == 200:
                self.seconds.append(time.perf_counter() - start)
            elif response.status == 503:
                self.busy += 1
            else:
                self.failed += 1
            if response.getheader("Connection", "").lower() == "close":
                conn = None


def slides_of(port: int) -> list[tuple[str, int, int, int]]:
    """(slide_id, width, height, patch size) of every indexed slide, from a slide query over all of them."""
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/api/info")
    n = json.loads(conn.getresponse().read())["counts"]["slides_ok"]
    conn.request("GET", "/api/search/text?q=tissue&k=" + str(min(n, 100)) + "&source=image")
    hits = json.loads(conn.getresponse().read())["hits"]
    return [(h["slide_id"], h["metadata"]["width"], h["metadata"]["height"], h["metadata"]["patch_size"]) for h in hits]


def mixed_level(port: int, pid: int, seconds: float, workload: Workload, mix: dict[str, int] = MIX) -> dict:
    """Every kind's clients and the health probe for ``seconds``: per-kind figures and the server's RSS."""
    warm = threading.Event()  # warm-up: one client of each kind for 3 s
    warmers = [Client(port, kind, workload, 99, warm) for kind in mix]
    for c in warmers:
        c.start()
    time.sleep(3)
    warm.set()
    for c in warmers:
        c.join(120)
    time.sleep(1)
    idle = rss_mb(pid)
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # the peak (VmHWM) counts from here
    stop = threading.Event()
    clients = [Client(port, kind, workload, 1000 * j + i, stop) for j, (kind, n) in enumerate(mix.items()) for i in range(n)]
    clients.append(Client(port, "health", workload, 7, stop, pause_s=0.05))
    samples = []
    start = time.perf_counter()
    for c in clients:
        c.start()
    while time.perf_counter() - start < seconds:
        samples.append(rss_mb(pid))
        time.sleep(0.1)
    stop.set()
    for c in clients:
        c.join(180)
    wall = time.perf_counter() - start
    kinds = {}
    for kind in [*mix, "health"]:
        mine = [c for c in clients if c.kind == kind]
        times = np.asarray([t for c in mine for t in c.seconds]) * 1000
        kinds[kind] = {"clients": len(mine), "n": int(len(times)), "per_s": len(times) / wall,
                       "p50_ms": float(np.percentile(times, 50)) if len(times) else None,
                       "p99_ms": float(np.percentile(times, 99)) if len(times) else None,
                       "max_ms": float(times.max()) if len(times) else None,
                       "busy_503": sum(c.busy for c in mine), "failed": sum(c.failed for c in mine)}
    peak = max(rss_mb(pid, "VmHWM"), *samples)
    return {"seconds": wall, "kinds": kinds, "rss_mb": {"idle": idle, "peak": peak, "peak_over_idle": peak - idle}}


def run(work: Path, seconds: float, patients: int, size: int, baseline: Path | None) -> dict:
    """Build or reuse the index, then the mixed level against this checkout's server (and the baseline's first)."""
    index = demo_index(work, patients, size)
    jpeg, _ = flood_images()
    out = {"index": str(index), "upload_bytes": len(jpeg), "mix": MIX, "servers": {}}
    for name, source in ([("baseline", baseline)] if baseline else []) + [("this", None)]:
        port = free_port()
        server = start_server(index, port, source)
        try:
            workload = Workload(slides_of(port), multipart(jpeg, "field.jpg"))
            out["servers"][name] = {"source": str(source or Path(__file__).resolve().parents[1]),
                                    **mixed_level(port, server.pid, seconds, workload)}
        finally:
            server.terminate()
            server.wait(60)
    return out


def markdown(result: dict) -> str:
    """The mixed level as a table: one row per server and kind."""
    lines = ["| server | kind | clients | answered | per s | p50 ms | p99 ms | max ms | 503 | failed |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for name, server in result["servers"].items():
        for kind, k in server["kinds"].items():
            cell = (lambda v: "—" if v is None else f"{v:.1f}")
            lines.append(f"| {name} | {kind} | {k['clients']} | {k['n']} | {k['per_s']:.1f} | {cell(k['p50_ms'])} | "
                         f"{cell(k['p99_ms'])} | {cell(k['max_ms'])} | {k['busy_503']} | {k['failed']} |")
    lines.append("")
    for name, server in result["servers"].items():
        rss = server["rss_mb"]
        lines.append(f"- {name}: server RSS idle {rss['idle']:.0f} MB, peak {rss['peak']:.0f} MB "
                     f"(+{rss['peak_over_idle']:.0f} MB) over {server['seconds']:.0f} s")
    return "\n".join(lines) + "\n"
