"""Adding one slide to an index of N slides, timed in-process over enough adds that automatic merges happen.

Usage: python -m benchmarks.incremental [--sizes 100,1000,10000] [--patches 1000] [--adds 30] [--out DIR]
       [--work DIR]

For each N, a child process writes a base index of N synthetic slides × ``--patches`` 128-d features (the
dimension of ``tiny``, aggregated with ``tiny``'s prototypes of the ``general`` bank) through the store's writer
in segments of at most 2,000 slides, with the FAISS indexes the pipeline would build (a base past the quantizer
threshold trains it, so no timed add pays for that one-off training). A second child process then adds ``--adds`` new synthetic 3,136² slides
(49 patches at 20x each) one at a time, each with ``run_index(..., IndexConfig(model="tiny"))`` as
``slidesearch index NEW.tif --out BASE --model tiny`` does: each add is one commit of one segment, and every
tenth add of a size tier triggers an automatic merge of the ten small segments, which that add pays for.
Each add is timed inside the process: interpreter start-up and imports are excluded, and so is the model load
that ``run_index`` reports (``load model``), which a long-lived writer pays once. The adding process's peak
RSS comes from ``wait4``. Reported per N: median, mean (amortised, merges included), p90 and slowest add, and
the adds that merged.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.common import header, provenance, subprocess_env, write_outputs

SEGMENT_SLIDES = 2000
TARGET_RATIO = 1.5  # issue 11: an add at 10^4 slides costs at most 1.5× an add at 10^2
TARGET_RSS = 1.2


def synthetic_features(slide_id: str, n: int, prototypes: np.ndarray) -> np.ndarray:
    """Unit float16 features near a few of the prototypes (deterministic per slide)."""
    rng = np.random.default_rng(zlib.crc32(slide_id.encode()))
    centres = prototypes[rng.integers(len(prototypes), size=n)]
    x = centres + 1.5 * rng.standard_normal(centres.shape).astype(np.float32) / np.sqrt(centres.shape[1])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float16)


def record(slide_id: str, n: int) -> dict:
    return {"slide_id": slide_id, "path": f"/synthetic/{slide_id}.svs", "sha256": f"{zlib.crc32(slide_id.encode()):064x}",
            "size_bytes": n, "mtime_ns": 1, "vendor": "synthetic", "width": 32 * 448, "height": 32 * 448, "mpp": 0.25,
            "mpp_source": "synthetic", "magnification": 40.0, "status": "ok", "error": None, "level": 0}


def build_base(root: Path, n_slides: int, patches: int) -> float:
    """A base index of synthetic slides written through the store's writer; returns seconds."""
    from indexer.aggregation.aggregate import aggregate_slide
    from indexer.aggregation.bank import load_bank
    from indexer.models.encoders import load_encoder
    from indexer.ingestion.commit import prototype_table
    from indexer.ingestion.config import IndexConfig, settings_for
    from indexer.aggregation.prototypes import embed_prototypes
    from indexer.store.segments import SlideRows
    from indexer.store.writer import IndexWriter

    start = time.perf_counter()
    encoder, bank = load_encoder("tiny", device="cpu"), load_bank("general")
    settings = settings_for(IndexConfig(model="tiny"), encoder, bank)
    text = embed_prototypes(bank, encoder)
    coords = np.stack([np.arange(patches) % 32 * 448, np.arange(patches) // 32 * 448], axis=1)
    with IndexWriter(root, create=True) as writer:
        writer.set_identity(settings)
        prototypes = writer.fix_prototypes(prototype_table(bank, text), text)

        def rows_of(rec):
            feats = synthetic_features(rec["slide_id"], patches, prototypes)
            emb = aggregate_slide(feats.astype(np.float32), prototypes, settings.aggregation)
            rec.update(entropy=float(emb.entropy), max_mass=float(emb.max_mass))
            return SlideRows(rec, coords, feats, emb.patch_proto, emb.patch_proto_sim, emb.slide_vector,
                             emb.mean_vector, emb.subvectors, emb.mass)

        for lo in range(0, n_slides, SEGMENT_SLIDES):
            records = [{**record(f"B{i:06d}", patches), "n_patches": patches, "patch_size": 448,
                        "fingerprint": settings.fingerprint(None)} for i in range(lo, min(n_slides, lo + SEGMENT_SLIDES))]
            writer.append_segment(records, rows_of, prototypes.shape)  # FAISS as the pipeline builds it
    return time.perf_counter() - start


def new_slides(folder: Path, count: int) -> list[Path]:
    """``count`` synthetic 3,136² slides at 0.25 µm/px (49 tissue patches at 20x each)."""
    from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide

    folder.mkdir(parents=True, exist_ok=True)
    return [write_slide(folder / f"NEW{i:03d}.tif", SyntheticSlideSpec(
        3136, 3136, (Region(0, 0, 3136, 3136, "tumour"),), mpp=0.25, seed=100 + i)) for i in range(count)]


def add_slides(root: Path, slides: list[Path]) -> list[dict]:
    """Add each slide with its own ``run_index`` call; per add: seconds (model load excluded), stages, merged."""
    from indexer.ingestion.config import IndexConfig
    from indexer.ingestion.run import run_index
    from indexer.store.layout import IndexPaths
    from indexer.store.versions import read_current

    config = IndexConfig(model="tiny", device="cpu", num_workers=0)
    rows = []
    for slide in slides:
        before = len(read_current(IndexPaths(root)).segments)
        start = time.perf_counter()
        report = run_index([slide], root, config, show_progress=False)
        wall = time.perf_counter() - start
        if report.failed:
            raise RuntimeError(f"{slide.name}: {report.failed}")
        after = len(read_current(IndexPaths(root)).segments)
        load = report.timings.get("load model", 0.0)
        rows.append({"slide": slide.name, "seconds": wall - load, "model_load_s": load, "segments": after,
                     "merged": after <= before, "stages": {k: round(v, 3) for k, v in report.timings.items()}})
    return rows


def child(args: list[str]) -> tuple[dict, float]:
    """Run this script's ``--child`` mode; returns its JSON answer and its peak RSS in MB (from wait4).

    This process stays small (NumPy only), so the child's peak, which Linux carries over from the parent at
    fork, is the child's own."""
    env = subprocess_env()
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.incremental", "--child", *args], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        out = proc.stdout.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode:
            err.seek(0)
            raise RuntimeError(f"incremental child {args[0]} failed: {err.read().strip().splitlines()[-1:]}")
    return json.loads(out.strip().splitlines()[-1]), usage.ru_maxrss / 1024


def summarise(n: int, rows: list[dict], peak_rss_mb: float) -> dict:
    seconds = np.array([r["seconds"] for r in rows])
    merged = [r for r in rows if r["merged"]]
    slowest = rows[int(seconds.argmax())]["stages"]
    stage = max((k for k in slowest if k not in ("load model", "commit")), key=slowest.get, default="")
    return {"n_slides": n, "adds": len(rows), "median_s": float(np.median(seconds)), "mean_s": float(seconds.mean()),
            "slowest_stage": f"{stage} {slowest.get(stage, 0):.2f} s" if stage else "",
            "p90_s": float(np.percentile(seconds, 90)), "max_s": float(seconds.max()), "merges": len(merged),
            "merge_add_s": [round(r["seconds"], 2) for r in merged],
            "model_load_s": float(np.median([r["model_load_s"] for r in rows])), "peak_rss_mb": peak_rss_mb}


def run(sizes: list[int], patches: int, adds: int, work: Path) -> dict:
    slides = new_slides(work / "new", adds)
    cells, base_s = [], {}
    for n in sizes:
        root = work / f"n{n}"
        answer, _ = child(["build", str(root), str(n), str(patches)])
        base_s[n] = answer["seconds"]
        print(f"N={n:,}: base written in {base_s[n]:.0f} s", file=sys.stderr, flush=True)
        rows, rss = child(["add", str(root), *map(str, slides)])
        cells.append(summarise(n, rows, rss) | {"rows": rows})
        print(f"N={n:,}: {adds} adds, median {cells[-1]['median_s']:.2f} s", file=sys.stderr, flush=True)
    return {"patches": patches, "adds": adds, "base_s": base_s, "cells": cells}


def markdown(result: dict) -> str:
    cells = result["cells"]
    lines = [header(result["provenance"]), "",
             f"Base: N synthetic slides × {result['patches']:,} patches (128-d, `tiny`'s prototypes, segments of "
             f"≤ {SEGMENT_SLIDES:,} slides). Each add: one synthetic 3,136² slide (49 patches at 20x) through "
             "`run_index` with `tiny` on the CPU, one commit; timed in-process, model load "
             f"(median {np.median([c['model_load_s'] for c in cells]):.2f} s) excluded, automatic merges included.",
             "", "| N slides | adds | median s | mean s (merges amortised) | p90 s | slowest s (its largest stage) "
             "| merges (their add s) | peak RSS MB |", "|---|---|---|---|---|---|---|---|"]
    for c in cells:
        lines.append(f"| {c['n_slides']:,} | {c['adds']} | {c['median_s']:.3f} | {c['mean_s']:.3f} | {c['p90_s']:.3f} "
                     f"| {c['max_s']:.3f} ({c['slowest_stage']}) | {c['merges']} ({', '.join(map(str, c['merge_add_s'])) or '—'}) "
                     f"| {c['peak_rss_mb']:.0f} |")
    if len(cells) > 1:
        lo, hi = cells[0], cells[-1]
        med, mean = hi["median_s"] / lo["median_s"], hi["mean_s"] / lo["mean_s"]
        rss = hi["peak_rss_mb"] / lo["peak_rss_mb"]
        verdict = "met" if max(med, mean) <= TARGET_RATIO and rss <= TARGET_RSS else "NOT met"
        lines += ["", f"At N = {hi['n_slides']:,} against N = {lo['n_slides']:,}: median add **{med:.2f}×**, mean "
                  f"add (merges included) **{mean:.2f}×**, peak RSS {rss:.2f}× (targets ≤ {TARGET_RATIO}× and ≤ "
                  f"{TARGET_RSS}×: {verdict})."]
    if not any(c["merges"] for c in cells):
        lines += ["", "No add merged segments: run at least 10 adds (`--adds`) to include an automatic merge."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for c in result["cells"]:
        seconds = [r["seconds"] for r in c["rows"]]
        ax.plot(range(1, len(seconds) + 1), seconds, "o-", ms=3, label=f"N = {c['n_slides']:,}")
    ax.set_xlabel("add (each one slide, one commit; spikes: automatic merges)")
    ax.set_ylabel("seconds (model load excluded)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> dict | None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        mode, root, *rest = argv[1:]
        if mode == "build":
            print(json.dumps({"seconds": build_base(Path(root), int(rest[0]), int(rest[1]))}))
        else:
            print(json.dumps(add_slides(Path(root), [Path(p) for p in rest])))
        return None
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000", help="slides in the base indexes")
    parser.add_argument("--patches", type=int, default=1000, help="patches per base slide")
    parser.add_argument("--adds", type=int, default=30, help="slides added one at a time to each base (≥ 10 merges)")
    parser.add_argument("--work", default=None, help="folder for the indexes (default: a temporary one, removed)")
    parser.add_argument("--out", default="out/bench-incremental", help="folder for the JSON, Markdown and PNG")
    args = parser.parse_args(argv)
    facts = provenance("benchmarks/incremental.py", argv)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench_incremental_"))
    if args.work and any(work.glob("n*/CURRENT")):
        parser.error(f"--work {work} already holds indexes; give an empty folder (every run builds fresh bases)")
    try:
        result = run([int(float(s)) for s in args.sizes.split(",") if s], args.patches, args.adds, work)
    finally:
        if not args.work:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    result["provenance"] = facts
    write_outputs(Path(args.out), "incremental", result, markdown(result))
    plot(result, Path(args.out) / "bench_incremental.png")
    return result


if __name__ == "__main__":
    main()
