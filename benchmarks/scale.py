"""Out-of-core scale: N patch vectors through the real writer in segments, trained-once IVF-PQ, exact re-rank.

Usage: python -m benchmarks.scale [--sizes 1e5,1e6,1e7] [--dim 512] [--patches 1000] [--segment 1e6]
       [--queries 1000] [--device auto|cpu|cuda] [--slides-at 1e5] [--slide-k 24] [--nlist 4096] [--work DIR]
       [--keep] [--out out/bench-scale] [--figure PNG (default: OUT/bench_scale.png)]

Each size N is built and measured in its own child process (its peak RSS comes from wait4): N/patches
clustered synthetic slides (the model of benchmarks/search.py, streamed slide by slide) go through
``IndexWriter.append_segment`` in segments of ``--segment`` patches, with the pipeline's ``auto_merge`` after
each commit. Recorded: build time, disk, peak RSS (build and queries), patch query p50/p99 (the FAISS search
with and without the exact re-rank, and the whole ``search_patch`` API call), recall@10 on ``--queries``
held-out queries (fresh patches of indexed slides, never indexed themselves) with and without re-rank,
slide and text query latency. ``--slides-at`` measures the slide-vector plan (IVF-PQ + exact re-rank) on that
many K·d-dimensional slide vectors. ``--device cuda`` refuses to run without a GPU visible to FAISS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.common import subprocess_env  # noqa: E402
from indexer.aggregation.aggregate import l2_normalize  # noqa: E402

TOP = 10
LATENCY_QUERIES = 200  # single queries timed per API kind
GB = 2**30


class ScaleGenerator:
    """The clustered model of ``benchmarks/search.py`` (prototypes, 32 morphology centres each, labels with
    preferred centres, slide masses π, sub-vectors ẑ_k, patches around them), generated per slide from its own
    seed, so 10⁷ patches never sit in memory at once and any slide can be regenerated (fresh draws of a slide's
    patches are held-out queries from the indexed distribution)."""

    def __init__(self, dim: int = 512, k: int = 8, patches: int = 1000, seed: int = 0):
        from benchmarks.search import CENTRES_PER_PROTOTYPE, N_LABELS

        rng = np.random.default_rng(seed)
        self.dim, self.k, self.patches, self.seed = dim, k, patches, seed
        self.protos = l2_normalize(rng.standard_normal((k, dim)))
        noise = l2_normalize(rng.standard_normal((k, CENTRES_PER_PROTOTYPE, dim)))
        self.centres = l2_normalize(self.protos[:, None] + 0.8 * noise)
        self.alpha = 0.3 + 3 * rng.dirichlet(np.full(k, 0.5), size=N_LABELS)
        self.label_centre = rng.integers(CENTRES_PER_PROTOTYPE, size=(N_LABELS, k))
        self.n_centres, self.n_labels = CENTRES_PER_PROTOTYPE, N_LABELS

    def slide(self, s: int) -> tuple[int, np.ndarray, np.ndarray]:
        """(label, masses π (K,), sub-vectors ẑ (K, d)) of slide ``s``."""
        rng = np.random.default_rng((self.seed, s))
        label = int(rng.integers(self.n_labels))
        mass = rng.gamma(self.alpha[label])
        own = np.where(rng.random(self.k) < 0.5, self.label_centre[label], rng.integers(self.n_centres, size=self.k))
        sub = l2_normalize(self.centres[np.arange(self.k), own] + 0.5 * rng.standard_normal((self.k, self.dim)) / np.sqrt(self.dim))
        return label, (mass / mass.sum()).astype(np.float32), sub

    def patch_draws(self, s: int, n: int, stream: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(prototype of each patch, unit patch vectors (n, d)): draw ``stream`` of slide ``s``'s patches."""
        _, mass, sub = self.slide(s)
        rng = np.random.default_rng((self.seed, s, 1 + stream))
        proto = rng.choice(self.k, size=n, p=mass).astype(np.int32)
        noise = rng.standard_normal((n, self.dim), dtype=np.float32) / np.float32(np.sqrt(self.dim))
        return proto, l2_normalize(sub[proto] + 0.8 * noise)

    def slide_vector(self, s: int) -> np.ndarray:
        """normalize(concat_k √π_k ẑ_k), the slide vector of DESIGN §3 (K·d,)."""
        _, mass, sub = self.slide(s)
        return l2_normalize((np.sqrt(mass)[:, None] * sub).reshape(-1))

    def rows(self, record: dict):
        """The :class:`SlideRows` of an indexed slide (record ``slide_id`` ``S<number>``)."""
        from indexer.store.segments import SlideRows

        s = int(record["slide_id"][1:])
        _, mass, sub = self.slide(s)
        proto, x = self.patch_draws(s, self.patches)
        grid = np.arange(self.patches)
        coords = np.stack([(grid % 32) * 448, (grid // 32) * 448], axis=1)
        sim = (x * self.protos[proto]).sum(axis=1)
        return SlideRows(record, coords, x.astype(np.float16), proto, sim, self.slide_vector(s),
                         l2_normalize(x.mean(axis=0)), sub, mass)


def settings(gen: ScaleGenerator, root: Path):
    from indexer.store.identity import IndexSettings

    return IndexSettings(encoder={"name": "synthetic", "weights_sha256": "synthetic", "dim": gen.dim},
                         bank={"name": "synthetic", "K": gen.k, "sha256": "synthetic", "source": str(root / "no-bank.yaml")})


def write_collection(root: Path, n_slides: int, gen: ScaleGenerator, segment_slides: int, progress=None) -> list[dict]:
    """Write ``n_slides`` generated slides through the store's writer, ``segment_slides`` per commit (the
    pipeline's auto-merge after each); returns per-segment timings. Resumes after the last committed slide."""
    import pyarrow as pa

    from indexer.store.compact import auto_merge
    from indexer.store.writer import IndexWriter

    segments = []
    with IndexWriter(root, create=True) as writer:
        writer.set_identity(settings(gen, root))
        names = [f"prototype {i}" for i in range(gen.k)]
        writer.fix_prototypes(pa.table({"proto_id": pa.array(range(gen.k), pa.int32()), "name": names,
                                        "descriptions": [[t] for t in names]}), gen.protos)
        done = writer.version.next_slide_row
        for lo in range(done, n_slides, segment_slides):
            start = time.perf_counter()
            records = [{"slide_id": f"S{r:07d}", "path": f"/synthetic/S{r:07d}.svs", "vendor": "synthetic",
                        "width": 32 * 448, "height": 32 * 448, "mpp": 0.25, "mpp_source": "synthetic",
                        "magnification": 40.0, "n_patches": gen.patches, "patch_size": 448, "status": "ok",
                        "fingerprint": "synthetic"} for r in range(lo, min(n_slides, lo + segment_slides))]
            version = writer.append_segment(records, gen.rows, (gen.k, gen.dim))
            merges = auto_merge(writer)
            segments.append({"slides": len(records), "seconds": round(time.perf_counter() - start, 1), "merges": merges,
                             "timings": version.timings, "rss_gb": _rss_gb(),
                             "factory": version.segments[-1]["faiss"]["patches"]["factory"]})
            if progress:
                progress(f"{lo + len(records):,}/{n_slides:,} slides written ({segments[-1]['seconds']} s)")
    return segments


def _rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def exact_patch_truth(snapshot, queries: np.ndarray, k: int = TOP) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (scores, patch rows) over every live segment's float16 features (streamed)."""
    from indexer.vectors.exact import exact_topk
    from indexer.store.segments import SegmentFiles

    scores, rows = [], []
    for folder in snapshot.segment_dirs():
        files = SegmentFiles(folder)
        s, pos = exact_topk(queries, files.features, k)
        scores.append(s)
        rows.append(files.patch_rows()[pos])
    s, r = np.hstack(scores), np.hstack(rows)
    order = np.argsort(-s, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(s, order, 1), np.take_along_axis(r, order, 1)


def percentiles(seconds: list[float]) -> dict:
    return {"p50_ms": 1e3 * float(np.percentile(seconds, 50)), "p99_ms": 1e3 * float(np.percentile(seconds, 99))}


def timed_each(fn, items) -> list[float]:
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append(time.perf_counter() - start)
    return out


def measure_size(root: Path, n_patches: int, gen: ScaleGenerator, segment: int, n_queries: int, progress=print) -> dict:
    """Build (or resume) the index of ``n_patches`` and measure it (run inside the child process)."""
    from indexer import vectors as vi
    from indexer.vectors.exact import tied_recall
    from indexer.store.rerank import RerankedIndex
    from retrieval.search import SlideSearcher
    from benchmarks.search import VectorEncoder, make_queries

    n_slides = n_patches // gen.patches
    start = time.perf_counter()
    segments = write_collection(root, n_slides, gen, max(1, segment // gen.patches), progress)
    build_s, build_rss = time.perf_counter() - start, _rss_gb()
    disk = sum(f.stat().st_size for f in root.rglob("*") if f.is_file())
    searcher = SlideSearcher(root, encoder=VectorEncoder())
    snapshot = searcher.catalog.snapshot
    rng = np.random.default_rng(12345)
    slides = rng.integers(n_slides, size=n_queries)
    queries = np.stack([gen.patch_draws(int(s), 1, stream=1 + i)[1][0] for i, s in enumerate(slides)])
    progress("exact ground truth of the held-out queries")
    t0 = time.perf_counter()
    truth_s, _ = exact_patch_truth(snapshot, queries)
    truth_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = searcher.catalog.faiss("patches")
    load_s = time.perf_counter() - t0
    raw = index.inner if isinstance(index, RerankedIndex) else index
    kth = truth_s[:, -1]
    progress("recall and latency")
    exact = lambda ids: snapshot.vectors("patches", ids)  # noqa: E731
    recall = {"reranked": tied_recall(queries, vi.search(index, queries, TOP)[1], exact, kth),
              "raw": tied_recall(queries, vi.search(raw, queries, TOP)[1], exact, kth)}
    latency = {"patch_faiss_reranked": percentiles(timed_each(lambda q: vi.search(index, q[None], TOP), queries)),
               "patch_faiss_raw": percentiles(timed_each(lambda q: vi.search(raw, q[None], TOP), queries))}
    api = make_queries(searcher, LATENCY_QUERIES, 0)
    searcher.search_patch(api["patch"][0], TOP)  # loads the per-patch arrays once, outside the timing
    latency["patch_api"] = percentiles(timed_each(lambda q: searcher.search_patch(q, TOP), queries[:LATENCY_QUERIES]))
    latency["slide_api"] = percentiles(timed_each(lambda s: searcher.search_slide(s, TOP), api["slide"]))
    latency["text_api"] = percentiles(timed_each(lambda q: searcher.search_text_vector(q, TOP), api["text"]))
    info = snapshot.manifest()["indexes"]
    return {"n_patches": n_patches, "n_slides": n_slides, "segment_patches": segment, "build_s": build_s,
            "disk_gb": disk / GB, "build_peak_rss_gb": build_rss, "peak_rss_gb": _rss_gb(), "segments": segments,
            "live_segments": len(snapshot.version.segments), "index_load_s": load_s, "truth_s": truth_seconds,
            "recall_at_10": recall, "latency": latency, "queries": n_queries,
            "indexes": {name: {k: v for k, v in e.items()} for name, e in info.items()}}


def measure_slides(work: Path, n: int, k: int, dim: int, n_queries: int, progress=print) -> dict:
    """The slide-vector plan on ``n`` slide vectors of K·d: IVF-PQ trained on a sample, exact re-rank from the
    float32 vectors (memory-mapped, as the store keeps them in ``slides.npy``); held-out = fresh slides."""
    from indexer import vectors as vi
    from indexer.vectors.exact import exact_topk, row_gather, tied_recall
    from indexer.store.quantizer import plan_choice
    from indexer.store.rerank import RerankedIndex

    gen = ScaleGenerator(dim, k, 1, seed=7)
    path = work / f"slides_{n}_{k}x{dim}.npy"
    vectors = np.lib.format.open_memmap(path, "w+", np.float32, (n, k * dim))
    t0 = time.perf_counter()
    for s in range(n):
        vectors[s] = gen.slide_vector(s)
    vectors.flush()
    gen_s = time.perf_counter() - t0
    del vectors
    vectors = np.load(path, mmap_mode="r")
    ids = np.arange(n, dtype=np.int64)
    choice = plan_choice(n, k * dim)
    progress(f"training {choice.describe()} on slide vectors")
    rows = np.sort(np.random.default_rng(0).choice(n, vi.train_sample_size(n, choice.nlist, k * dim), replace=False))
    t0 = time.perf_counter()
    trained = vi.train_index(np.asarray(vectors[rows]), choice)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    index = vi.add_to_trained(trained, vectors, ids)
    add_s = time.perf_counter() - t0
    gather = row_gather(vectors, ids)
    reranked = RerankedIndex(index, gather, pool=100)
    queries = np.stack([gen.slide_vector(n + i) for i in range(n_queries)])  # fresh slides: never indexed
    kth = exact_topk(queries, vectors, TOP)[0][:, -1]
    recall = {"raw": tied_recall(queries, vi.search(index, queries, TOP)[1], gather, kth),
              "reranked": tied_recall(queries, vi.search(reranked, queries, TOP)[1], gather, kth)}
    latency = {"raw": percentiles(timed_each(lambda q: vi.search(index, q[None], TOP), queries[:LATENCY_QUERIES])),
               "reranked": percentiles(timed_each(lambda q: vi.search(reranked, q[None], TOP), queries[:LATENCY_QUERIES]))}
    nbytes = vi.index_nbytes(index)
    fixed = vi.index_nbytes(trained)
    path.unlink()
    per_slide = (nbytes - fixed) / n
    return {"n_slides": n, "k": k, "dim": dim, "factory": choice.describe(), "nprobe": choice.nprobe, "pool": 100,
            "generate_s": gen_s, "train_s": train_s, "add_s": add_s, "index_bytes": nbytes, "fixed_bytes": fixed,
            "bytes_per_slide": per_slide, "float32_bytes_per_slide": 4 * k * dim, "recall_at_10": recall,
            "latency": latency, "queries": n_queries, "memory_at_1e6_gb": (fixed + 1e6 * per_slide) / GB,
            "rerank_disk_at_1e6_gb": 1e6 * 4 * k * dim / GB}


def child(argv: list[str]) -> dict:
    """Run one measurement in this process (``--one N`` or ``--one slides``) and return it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--one")
    parser.add_argument("--work")
    parser.add_argument("--dim", type=int)
    parser.add_argument("--patches", type=int)
    parser.add_argument("--segment", type=int)
    parser.add_argument("--queries", type=int)
    parser.add_argument("--slide-k", type=int)
    parser.add_argument("--slides", type=int)
    parser.add_argument("--nlist", type=int)
    a = parser.parse_args(argv)
    work = Path(a.work)
    if a.nlist:
        from indexer.store import quantizer

        quantizer.PLAN = quantizer.QuantizerPlan(nlist=a.nlist)
    say = lambda text: print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)  # noqa: E731
    if a.one == "slides":
        return measure_slides(work, a.slides, a.slide_k, a.dim, a.queries, say)
    n = int(float(a.one))
    return measure_size(work / f"n{n}_d{a.dim}", n, ScaleGenerator(a.dim, 8, a.patches), a.segment, a.queries, say)


def run_child(args: list[str]) -> dict:
    """Run ``child`` in a fresh interpreter; adds its wall time and peak RSS (wait4)."""
    with tempfile.NamedTemporaryFile("r", suffix=".json") as out:
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.scale", "--child-out", out.name, *args], cwd=ROOT,
                                env=subprocess_env())
        _, status, usage = os.wait4(proc.pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"benchmark child {' '.join(args)} failed with status {os.waitstatus_to_exitcode(status)}")
        result = json.loads(Path(out.name).read_text())
    return result | {"process_wall_s": time.perf_counter() - start, "process_peak_rss_gb": usage.ru_maxrss / 2**20}


def markdown(result: dict) -> str:
    """Tables: per size, then the slide-vector plan."""
    lines = [f"Command: `{result['command']}`", "", f"Machine: {result['machine']}; device {result['device']}.", "",
             *([f"**{result['kept']}** (build s counts only what this run added)", ""] if result.get("kept") else []),
             "| patches | slides | segments | patch index | build s | disk GB | peak RSS GB (build / all) "
             "| recall@10 re-ranked | recall@10 raw | patch FAISS+re-rank p50 / p99 ms | raw p50 / p99 ms "
             "| patch API p50 / p99 ms | slide API p50 / p99 ms | text API p50 / p99 ms |", "|" + "---|" * 14]
    for r in sorted(result["sizes"], key=lambda r: r["n_patches"]):
        lat = r["latency"]
        cell = lambda key: f"{lat[key]['p50_ms']:.2f} / {lat[key]['p99_ms']:.2f}"  # noqa: E731
        lines.append(
            f"| {r['n_patches']:,} | {r['n_slides']:,} | {r['live_segments']} | `{r['indexes']['patches']['factory']}` "
            f"| {r['build_s']:.0f} | {r['disk_gb']:.2f} | {r['build_peak_rss_gb']:.2f} / {r['process_peak_rss_gb']:.2f} "
            f"| **{r['recall_at_10']['reranked']:.3f}** | {r['recall_at_10']['raw']:.3f} | {cell('patch_faiss_reranked')} "
            f"| {cell('patch_faiss_raw')} | {cell('patch_api')} | {cell('slide_api')} | {cell('text_api')} |")
    s = result.get("slides")
    if s:
        lines += ["", f"Slide vectors: {s['n_slides']:,} slides of K·d = {s['k']}·{s['dim']} = {s['k'] * s['dim']:,}, "
                  f"`{s['factory']}` (nprobe {s['nprobe']}), exact re-rank of the top {s['pool']} from float32: "
                  f"recall@10 on {s['queries']} held-out slides **{s['recall_at_10']['reranked']:.3f}** re-ranked, "
                  f"{s['recall_at_10']['raw']:.3f} raw; p50 {s['latency']['reranked']['p50_ms']:.2f} ms re-ranked, "
                  f"{s['latency']['raw']['p50_ms']:.2f} ms raw; train {s['train_s']:.0f} s, add {s['add_s']:.0f} s; "
                  f"{s['bytes_per_slide']:.0f} bytes/slide in memory + {s['fixed_bytes'] / 1e6:.1f} MB fixed "
                  f"→ {s['memory_at_1e6_gb']:.2f} GB at 10⁶ slides (re-rank source on disk: "
                  f"{s['rerank_disk_at_1e6_gb']:.0f} GB float32)."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    """Log-log build time, patch query latency and peak RSS against N."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = sorted(result["sizes"], key=lambda r: r["n_patches"])
    n = [r["n_patches"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].plot(n, [r["build_s"] for r in rows], "o-", label="build (writer, segments of 10⁶)")
    axes[1].plot(n, [r["latency"]["patch_faiss_reranked"]["p50_ms"] for r in rows], "o-", label="FAISS + re-rank p50")
    axes[1].plot(n, [r["latency"]["patch_faiss_reranked"]["p99_ms"] for r in rows], "s--", label="FAISS + re-rank p99")
    axes[1].plot(n, [r["latency"]["patch_api"]["p50_ms"] for r in rows], "^-", label="search_patch API p50")
    axes[2].plot(n, [r["process_peak_rss_gb"] for r in rows], "o-", label="peak RSS (process)")
    axes[2].axhline(8, color="r", lw=0.8, ls=":", label="8 GB bound")
    for ax, label in zip(axes, ("seconds", "ms per query", "GB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("patch vectors (512-d)")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"benchmarks/scale.py — {result['machine']}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    """Parse options, measure every size (and the slide plan) in child processes, write JSON, Markdown, PNG."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--child-out":
        Path(argv[1]).write_text(json.dumps(child(argv[2:])))
        return {}
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1e5,1e6,1e7", help="comma-separated numbers of patch vectors")
    parser.add_argument("--dim", type=int, default=512, help="embedding dimension d")
    parser.add_argument("--patches", type=int, default=1000, help="patches per slide")
    parser.add_argument("--segment", type=float, default=1e6, help="patches per committed segment")
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries for recall@10")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="where FAISS trains and searches")
    parser.add_argument("--slides-at", type=float, default=1e5, help="slides for the slide-vector plan (0: skip)")
    parser.add_argument("--slide-k", type=int, default=24, help="prototypes K of the slide vectors (K·d dims)")
    parser.add_argument("--nlist", type=int, default=4096, help="inverted lists of the trained-once quantizer (d ≤ 512)")
    parser.add_argument("--work", default=None, help="folder for the indexes (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="keep the indexes in --work (a re-run resumes and reuses "
                        "them, and says which commit wrote them)")
    parser.add_argument("--out", default="out/bench-scale", help="folder for bench_scale.json / .md")
    parser.add_argument("--figure", default=None, help="PNG path (default: bench_scale.png in --out)")
    args = parser.parse_args(argv)
    import faiss

    from indexer.vectors import DEVICE_ENV
    from benchmarks.common import machine_description

    if args.device == "cuda" and faiss.get_num_gpus() == 0:
        print("error: --device cuda, but FAISS sees no GPU (install faiss-gpu on a machine with CUDA)", file=sys.stderr)
        raise SystemExit(2)
    os.environ[DEVICE_ENV] = "cpu" if args.device == "cpu" else "auto"  # the children inherit it
    work = Path(args.work or tempfile.mkdtemp(prefix="bench_scale_"))
    work.mkdir(parents=True, exist_ok=True)
    from benchmarks.common import kept

    reuse_note = kept(work) if args.keep else None
    common = ["--work", str(work), "--dim", str(args.dim), "--patches", str(args.patches), "--nlist", str(args.nlist),
              "--segment", str(int(args.segment)), "--queries", str(args.queries), "--slide-k", str(args.slide_k)]
    result = {"command": "python -m benchmarks.scale " + " ".join(shlex.quote(a) for a in argv),
              "machine": machine_description(), "device": args.device if args.device != "auto" else
              ("cuda" if faiss.get_num_gpus() else "cpu"), "sizes": [], "slides": None, "kept": reuse_note}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for n in [int(float(s)) for s in args.sizes.split(",") if s]:
            result["sizes"].append(run_child(["--one", str(n), *common]))
            if not args.keep:
                shutil.rmtree(work / f"n{n}_d{args.dim}", ignore_errors=True)
            (out / "bench_scale.json").write_text(json.dumps(result, indent=2) + "\n")
        if args.slides_at:
            result["slides"] = run_child(["--one", "slides", "--slides", str(int(args.slides_at)), *common])
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    (out / "bench_scale.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "bench_scale.md").write_text(markdown(result))
    if result["sizes"]:
        figure = Path(args.figure) if args.figure else out / "bench_scale.png"
        figure.parent.mkdir(parents=True, exist_ok=True)
        plot(result, figure)
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
