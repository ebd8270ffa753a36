"""`slidesearch serve` under load: 1, 4 and 16 concurrent clients against a 100k-slide index, over loopback.

Usage: python -m benchmarks.serve [--slides 100000] [--dim 512 --k 16 | --dim 128 --k 8] [--clients 1,4,16]
       [--seconds 30] [--max-requests 20000] [--keep DIR] [--out out/bench-serve]
       python -m benchmarks.serve --mixed [--baseline-src DIR] [--seconds 30] [--patients 12 --size 2048]
         (the mixed level: benchmarks/serve_mixed.py)

The index is ``benchmarks/search.py``'s ``synthetic_index`` (10 patches per slide, ``--dim``-d, ``--k``
prototypes). Its encoder is named "synthetic", so the server is given a real encoder of the same space size with
random weights through ``create_app(index, encoder=...)``: ``tiny`` for 128-d, open_clip ViT-B-32 (CONCH's size)
for 512-d. Text queries run its real text tower behind the server's batching
queue, and patch queries upload a 64² PNG that its image tower embeds (the synthetic slides have no pixels, so
region queries are not part of the mix). The server runs in its own process; each client is a thread with
one keep-alive ``http.client`` connection, cycling text (unique strings), slide (random ids) and patch
queries, for ``--seconds`` or ``--max-requests``, whichever comes first. Clients speak HTTP/1.1 over a raw
keep-alive socket (``RawConnection``, as wrk does): ``http.client`` parses each response's headers with the
``email`` package, ~0.3 ms a response here, which is the load generator's cost, not the server's; the
sequential slide figures are also given through ``http.client``. The server's RSS is sampled every
0.25 s. In-process figures come from the library in this process, in blocks alternating with the same
queries over HTTP, so each ratio is measured in one run (the server idles while this process searches):
sequential slide queries (``paired_slide``) and the 1-client text, slide, patch cycle (``paired_mix``).
"""

from __future__ import annotations

import argparse
import http.client
import io
import json
import shutil
import socket
import subprocess
import tempfile
import sys
import threading
import time
import uuid
from pathlib import Path

# before numpy: its OpenBLAS, like FAISS's OpenMP, sizes its thread pool when it loads (one_thread_per_request), so
# the in-process figures run single-threaded as the server does (numpy first gave this process 2 BLAS threads)
from indexer import settings  # noqa: E402

settings.apply_server_defaults()

import numpy as np  # noqa: E402

from benchmarks.common import ROOT, subprocess_env  # noqa: E402
from benchmarks.fixtures.clients import free_port, multipart, rss_mb  # noqa: E402

KINDS = ("text", "slide", "patch")
FILTER = "label = 'c3'"  # about 10 % of the synthetic slides
WORDS = ("adenocarcinoma", "necrosis", "stroma", "mucin", "lymphocytes", "glands", "poorly", "differentiated",
         "tumour", "fibrosis", "inflammation", "squamous", "keratin", "vessels", "fat", "nuclei")


ENCODERS = {128: ("tiny", None), 512: ("openclip:ViT-B-32", "random")}  # real towers, random weights, by dim


def serve(index: str, port: int, dim: int) -> None:
    """The server process: the synthetic index served with a ``dim``-d encoder on 127.0.0.1:``port``."""
    from retrieval.serve import one_thread_per_request

    one_thread_per_request()  # as `slidesearch serve` does
    import uvicorn

    from indexer.models.encoders import load_encoder
    from retrieval.serve.app import create_app

    name, checkpoint = ENCODERS[dim]
    app = create_app(index, encoder=load_encoder(name, checkpoint=checkpoint, device="cpu"))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def patch_png(seed: int) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


class RawConnection:
    """A minimal HTTP/1.1 keep-alive client on one socket: a request out, its status and body back."""

    def __init__(self, port: int, timeout: float = 60):
        self.port, self.timeout = port, timeout
        self.headers: dict[str, str] = {}  # of the last response, lower-case names
        self._connect()

    def _connect(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", self.port), timeout=self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer, self.used = b"", time.monotonic()

    def fresh_if_idle(self, seconds: float = 4.0) -> None:
        """Reconnect when idle for ``seconds`` (uvicorn closes idle keep-alive connections after 5 s), as
        browsers do; call it before timing a request."""
        if time.monotonic() - self.used > seconds:
            self.close()
            self._connect()

    def request(self, method: str, url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, bytes]:
        lines = [f"{method} {url} HTTP/1.1", "Host: 127.0.0.1"] + [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b""))
        while b"\r\n\r\n" not in self.buffer:
            self._receive()
        head, _, rest = self.buffer.partition(b"\r\n\r\n")
        self.headers = {k.strip().lower().decode(): v.strip().decode()
                        for k, v in (line.split(b":", 1) for line in head.split(b"\r\n")[1:])}
        length = int(self.headers["content-length"])
        while len(rest) < length:
            rest += self._receive(keep=False)
        self.buffer, self.used = rest[length:], time.monotonic()
        return int(head[9:12]), rest[:length]

    def _receive(self, keep: bool = True) -> bytes:
        data = self.sock.recv(1 << 16)
        if not data:
            raise ConnectionError("the server closed the connection")
        if keep:
            self.buffer += data
        return data

    def close(self) -> None:
        self.sock.close()


def draw_query(rng, kind: str, n_slides: int, n_uploads: int):
    """A query of ``kind``: a unique text (no cache hits), a random slide id, or an upload's number."""
    if kind == "text":
        return " ".join(rng.choice(WORDS, 4)) + f" {uuid.uuid4().hex[:6]}"
    return f"S{int(rng.integers(n_slides)):06d}" if kind == "slide" else int(rng.integers(n_uploads))


def http_request(kind: str, value, forms: list[tuple[bytes, dict]]) -> tuple[str, str, bytes | None, dict]:
    """(method, url, body, headers) of a ``draw_query`` value (``forms``: the uploads as multipart bodies)."""
    if kind == "text":
        return "GET", f"/api/search/text?q={value.replace(' ', '+')}&k=10", None, {}
    if kind == "slide":
        return "GET", f"/api/search/slide?slide_id={value}&k=10", None, {}
    body, headers = forms[value]
    return "POST", "/api/search/patch?k=10", body, headers


class Client(threading.Thread):
    """One keep-alive connection sending a cycle of text, slide and patch queries until told to stop."""

    def __init__(self, port: int, seed: int, n_slides: int, stop: threading.Event, budget: list):
        super().__init__(daemon=True)
        self.port, self.stop, self.budget = port, stop, budget
        self.rng = np.random.default_rng(seed)
        self.n_slides = n_slides
        self.uploads = [multipart(patch_png(seed * 100 + i)) for i in range(8)]
        self.times: dict[str, list[float]] = {k: [] for k in KINDS}
        self.errors: list[str] = []

    def request(self, kind: str) -> tuple[str, str, bytes | None, dict]:
        return http_request(kind, draw_query(self.rng, kind, self.n_slides, len(self.uploads)), self.uploads)

    def run(self) -> None:
        conn = RawConnection(self.port)
        i = 0
        while not self.stop.is_set():
            with lock:
                if self.budget[0] <= 0:
                    return
                self.budget[0] -= 1
            kind = KINDS[i % 3]
            i += 1
            method, url, body, headers = self.request(kind)
            start = time.perf_counter()
            try:
                status, payload = conn.request(method, url, body=body, headers=headers)
                elapsed = time.perf_counter() - start
                if status != 200 or not payload.startswith(b'{"kind"'):
                    self.errors.append(f"{status} {payload[:200]!r}")
                else:
                    self.times[kind].append(elapsed)
            except (OSError, ValueError, KeyError) as exc:
                self.errors.append(repr(exc))
                conn.close()
                conn = RawConnection(self.port)
        conn.close()


lock = threading.Lock()


def server_info(port: int) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.request("GET", "/api/info")
    return json.loads(conn.getresponse().read())


def load_level(port: int, pid: int, clients: int, seconds: float, max_requests: int, n_slides: int) -> dict:
    """``clients`` concurrent clients for ``seconds`` (or ``max_requests`` in all): per-kind figures, errors, RSS."""
    stop, budget = threading.Event(), [max_requests]
    before = server_info(port)["served"]
    threads = [Client(port, 1000 * clients + i, n_slides, stop, budget) for i in range(clients)]
    rss = [rss_mb(pid)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    while time.perf_counter() - start < seconds and any(t.is_alive() for t in threads):
        time.sleep(0.25)
        rss.append(rss_mb(pid))
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    after = server_info(port)["served"]
    kinds = {}
    for kind in KINDS:
        times = np.asarray([x for t in threads for x in t.times[kind]]) * 1000
        kinds[kind] = {"n": int(len(times)), "qps": len(times) / wall,
                       "p50_ms": float(np.percentile(times, 50)) if len(times) else None,
                       "p99_ms": float(np.percentile(times, 99)) if len(times) else None}
    batches = after["text_batches"] - before["text_batches"]
    texts = after["texts_encoded"] - before["texts_encoded"]
    errors = [e for t in threads for e in t.errors]
    return {"clients": clients, "seconds": wall, "requests": sum(k["n"] for k in kinds.values()) + len(errors),
            "qps": sum(k["n"] for k in kinds.values()) / wall, "kinds": kinds, "errors": len(errors),
            "error_examples": errors[:3], "rss_mb": {"start": rss[0], "max": max(rss), "end": rss[-1], "max_halves": [max(rss[:len(rss) // 2 or 1]),
                                                                                     max(rss[len(rss) // 2:])]},
            "text_batches": batches, "texts_per_batch": texts / batches if batches else None}


def slide_ids(n_slides: int, n: int, seed: int = 0) -> list[str]:
    return [f"S{int(r):06d}" for r in np.random.default_rng(seed).integers(n_slides, size=n)]


def _p50(values: list[float]) -> float | None:
    return float(np.percentile(np.asarray(values) * 1000, 50)) if values else None


def _alternate(sides: dict, items: list, block: int) -> dict[str, list]:
    """Run every item through each side in turn, a block at a time, rotating which side goes first: the
    sides' figures then come from one run and share the machine's drift. Returns side → per-item results."""
    names, out = list(sides), {name: [] for name in sides}
    for i, lo in enumerate(range(0, len(items), block)):
        for name in names[i % len(names):] + names[:i % len(names)]:
            out[name] += [sides[name](item) for item in items[lo:lo + block]]
    return out


def paired_slide(port: int, searcher, n_slides: int, where: str | None = None, n: int = 1000, block: int = 50) -> dict:
    """Sequential slide queries (k = 10) over HTTP, through a raw socket and through ``http.client``, and
    in-process through ``searcher.search_slide`` (with and without its JSON: ``result_json`` + ``dumps``, which
    the HTTP answer also builds), the same ids on every side, alternating in blocks (``_alternate``)."""
    from urllib.parse import quote

    from retrieval.query.results import dumps, result_json

    raw, client = RawConnection(port), http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    suffix = f"&where={quote(where)}" if where else ""

    def over_raw(slide: str) -> tuple[float, float | None]:
        raw.fresh_if_idle()
        start = time.perf_counter()
        status, _ = raw.request("GET", f"/api/search/slide?slide_id={slide}&k=10{suffix}")
        took = time.perf_counter() - start
        if status != 200:
            raise SystemExit(f"slide query failed: {status}")
        timing = raw.headers.get("server-timing", "")
        return took, float(timing.split("dur=")[1]) / 1000 if "dur=" in timing else None

    def over_http_client(slide: str) -> tuple[float, None]:
        start = time.perf_counter()
        client.request("GET", f"/api/search/slide?slide_id={slide}&k=10{suffix}")
        response = client.getresponse()
        response.read()
        if response.status != 200:
            raise SystemExit(f"slide query failed: {response.status}")
        return time.perf_counter() - start, None

    def in_process(slide: str) -> tuple[float, float]:
        start = time.perf_counter()
        result = searcher.search_slide(slide, k=10, where=where)
        searched = time.perf_counter()
        dumps(result_json(result))
        return searched - start, time.perf_counter() - start

    sides = {"raw": over_raw, "http.client": over_http_client, "in_process": in_process}
    ids = slide_ids(n_slides, n + 100, seed=1 if where else 0)
    _alternate(sides, ids[:100], 100)  # warm every side
    got = _alternate(sides, ids[100:], block)
    raw.close()
    client.close()
    http_times, inside = [t for t, _ in got["raw"]], [s for _, s in got["raw"] if s is not None]
    search_times, with_json = [t for t, _ in got["in_process"]], [j for _, j in got["in_process"]]
    return {"n": n, "where": where, "block": block, "http_p50_ms": _p50(http_times),
            "http_p99_ms": float(np.percentile(np.asarray(http_times) * 1000, 99)), "server_search_p50_ms": _p50(inside),
            "http_client_p50_ms": _p50([t for t, _ in got["http.client"]]),
            "in_process_p50_ms": _p50(search_times), "in_process_p99_ms": float(np.percentile(np.asarray(search_times) * 1000, 99)),
            "in_process_with_json_p50_ms": _p50(with_json), "ratio": _p50(http_times) / _p50(search_times)}


def paired_mix(port: int, searcher, n_slides: int, seconds: float, block: int = 5, seed: int = 7) -> dict:
    """The load clients' text, slide, patch cycle by one client, over HTTP (raw socket) and through the library
    in this process, alternating ``block`` cycles at a time for about ``seconds`` a side: slide queries then
    follow the encoder's forward passes on both sides, as in the 1-client level."""
    from PIL import Image

    rng, conn = np.random.default_rng(seed), RawConnection(port)
    uploads = [patch_png(seed * 100 + i) for i in range(8)]
    forms = [multipart(data) for data in uploads]

    def query(i: int) -> tuple[str, object]:
        kind = KINDS[i % 3]
        return kind, draw_query(rng, kind, n_slides, len(uploads))

    def over_http(item: tuple[str, object]) -> tuple[str, float]:
        kind, value = item
        method, url, body, headers = http_request(kind, value, forms)
        conn.fresh_if_idle()  # after the other side's block
        start = time.perf_counter()
        status, _ = conn.request(method, url, body=body, headers=headers)
        if status != 200:
            raise SystemExit(f"{kind} query failed: {status}")
        return kind, time.perf_counter() - start

    def in_process(item: tuple[str, object]) -> tuple[str, float]:
        kind, value = item
        start = time.perf_counter()
        if kind == "text":
            searcher.search_text(value, k=10)
        elif kind == "slide":
            searcher.search_slide(value, k=10)
        else:
            searcher.search_patch(Image.open(io.BytesIO(uploads[value])).convert("RGB"), k=10)
        return kind, time.perf_counter() - start

    cycle_s = sum(in_process(query(i))[1] for i in range(3))  # one cycle, also a warm-up
    items = [query(i) for i in range(3 * max(block, round(seconds / max(cycle_s, 1e-3) / block) * block))]
    got = _alternate({"http": over_http, "in_process": in_process}, items, 3 * block)
    conn.close()
    out = {side: {kind: {"n": sum(k == kind for k, _ in rows), "p50_ms": _p50([t for k, t in rows if k == kind])}
                  for kind in KINDS} for side, rows in got.items()}
    out["block_cycles"], out["slide_ratio"] = block, out["http"]["slide"]["p50_ms"] / out["in_process"]["slide"]["p50_ms"]
    return out


def markdown(result: dict) -> str:
    lines = [f"Machine: {result['machine']}. Index: {result['slides']:,} slides, {result['patches']:,} patches, "
             f"d = {result['dim']}, K = {result['k']} ({result['factories']}); queries embedded by {result['encoder']}.", "",
             "| clients | kind | requests | QPS | p50 ms | p99 ms | errors | server RSS MB: start → max in the 1st / 2nd half "
             "→ end | texts per batch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for level in result["levels"]:
        rss = level["rss_mb"]
        for kind, k in level["kinds"].items():
            lines.append(f"| {level['clients']} | {kind} | {k['n']} | {k['qps']:.1f} | {k['p50_ms']:.2f} | {k['p99_ms']:.2f} | "
                         f"{level['errors']} | {rss['start']:.0f} → {rss['max_halves'][0]:.0f} / {rss['max_halves'][1]:.0f} → {rss['end']:.0f} | "
                         f"{level['texts_per_batch'] or 0:.1f} |")
    alone, filtered, mix, warm = result["slide_alone"], result["filtered_slide"], result["mix"], result["warmup"]
    lines += ["", f"Warm-up ({warm['requests']} requests, 4 clients, not in the table): {warm['errors']} errors.", "",
              "Slide queries, one client alone (k = 10): HTTP through a raw keep-alive socket and through `http.client`, "
              f"and in-process `search_slide`, the same ids, alternating in blocks of {alone['block']} in one run:", "",
              "| queries | filter | HTTP p50 / p99 ms | `http.client` p50 ms | in-process p50 / p99 ms | with its JSON p50 ms | "
              "search inside the server (`Server-Timing`) p50 ms | HTTP / in-process |", "|---|---|---|---|---|---|---|---|"]
    for row in (alone, filtered):
        inside = row["server_search_p50_ms"]
        lines.append(f"| {row['n']} | {row['where'] or '—'} | {row['http_p50_ms']:.2f} / {row['http_p99_ms']:.2f} | "
                     f"{row['http_client_p50_ms']:.2f} | {row['in_process_p50_ms']:.2f} / {row['in_process_p99_ms']:.2f} | "
                     f"{row['in_process_with_json_p50_ms']:.2f} | {'—' if inside is None else f'{inside:.2f}'} | "
                     f"**{row['ratio']:.2f}×** |")
    sides = {"HTTP": mix["http"], "in-process": mix["in_process"]}
    lines += ["", f"The 1-client cycle (text, slide, patch), over HTTP and in-process, alternating {mix['block_cycles']} "
              "cycles at a time: " + "; ".join(f"{side} " + ", ".join(f"{kind} p50 {v['p50_ms']:.2f} ms ({v['n']})"
                                                                   for kind, v in rows.items())
                                               for side, rows in sides.items())
              + f". Slide queries in the cycle, HTTP / in-process: **{mix['slide_ratio']:.2f}×**."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512, choices=sorted(ENCODERS),
                        help="Patch space: 512 is CONCH's and ViT-B's; 128 a quick, toy-sized one.")
    parser.add_argument("--k", type=int, default=16, help="Prototypes (slide vectors are k·dim; the shipped banks have 22-30).")
    parser.add_argument("--clients", default="1,4,16")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--keep", type=Path, default=None,
                        help="Folder for the index, reused when it holds one (default: a fresh temporary folder, removed after).")
    parser.add_argument("--out", type=Path, default=Path("out/bench-serve"))
    parser.add_argument("--mixed", action="store_true", help="Only the mixed level (benchmarks/serve_mixed.py): searches, "
                        "tiles, crops, heatmaps and 33.5-MP uploads at once, on the demo cohort (--seconds each server).")
    parser.add_argument("--baseline-src", type=Path, default=None, help="--mixed: also run it against the server of "
                        "this source tree first (e.g. `git archive REV | tar -x -C DIR`).")
    parser.add_argument("--patients", type=int, default=12, help="--mixed: demo cohort patients (2 slides each).")
    parser.add_argument("--size", type=int, default=2048, help="--mixed: slide side in px.")
    parser.add_argument("--serve", nargs=3, metavar=("INDEX", "PORT", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return {}
    if args.mixed:
        return mixed(args)
    from benchmarks.search import SyntheticSpec, synthetic_index

    from benchmarks.common import machine_description

    work = args.keep or scratch(f"slidesearch-bench-serve-{args.slides}-")
    spec = SyntheticSpec(args.slides, dim=args.dim, k=args.k)
    index = work / (f"n{args.slides}" if (args.dim, args.k) == (128, 8) else f"n{args.slides}_d{args.dim}_k{args.k}")
    manifest = synthetic_index(index, spec)
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "benchmarks.serve", "--serve", str(index), str(port), str(args.dim)],
                              cwd=ROOT, env=subprocess_env())
    try:
        deadline = time.monotonic() + 600
        while True:
            try:
                server_info(port)
                break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.5)
        warmup = load_level(port, server.pid, 4, 3.0, 1000, args.slides)  # not in the table; its errors count
        levels = [load_level(port, server.pid, int(c), args.seconds, args.max_requests, args.slides)
                  for c in args.clients.split(",")]
        from retrieval.search import SlideSearcher
        from retrieval.serve.live import warm

        from indexer.models.encoders import load_encoder

        name, checkpoint = ENCODERS[args.dim]
        searcher = warm(SlideSearcher(index, encoder=load_encoder(name, checkpoint=checkpoint, device="cpu")))
        # beside the server; the two take turns, never at once
        alone, filtered = paired_slide(port, searcher, args.slides), paired_slide(port, searcher, args.slides, FILTER, 300)
        mix = paired_mix(port, searcher, args.slides, args.seconds)
        del searcher
    finally:
        server.terminate()
        server.wait(30)
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    result = {"machine": machine_description(), "slides": args.slides, "dim": args.dim, "k": args.k,
              "encoder": ENCODERS[args.dim][0], "patches": manifest["counts"]["patches"],
              "factories": ", ".join(f"{k} {v['factory']}" for k, v in manifest["indexes"].items()),
              "config": {"clients": args.clients, "seconds": args.seconds, "max_requests": args.max_requests},
              "warmup": warmup, "levels": levels, "slide_alone": alone, "filtered_slide": filtered, "mix": mix}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serve.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_serve.md").write_text(markdown(result))
    print(markdown(result))
    return result


def scratch(prefix: str) -> Path:
    """A new, empty folder for an index written by this run (without ``--keep`` nothing is reused)."""
    return Path(tempfile.mkdtemp(prefix=prefix))


def mixed(args) -> dict:
    """The mixed level alone (``--mixed``), written to ``--out``/bench_serve_mixed.{json,md}."""
    from benchmarks import serve_mixed

    from benchmarks.common import machine_description

    work = args.keep or scratch(f"slidesearch-bench-serve-mixed-{args.patients}x{args.size}-")
    result = {"machine": machine_description(), "seconds": args.seconds,
              **serve_mixed.run(work, args.seconds, args.patients, args.size, args.baseline_src)}
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_serve_mixed.json").write_text(json.dumps(result, indent=2) + "\n")
    text = f"Machine: {result['machine']}. Index: {result['index']}.\n\n" + serve_mixed.markdown(result)
    (args.out / "bench_serve_mixed.md").write_text(text)
    print(text)
    return result


if __name__ == "__main__":
    main()
