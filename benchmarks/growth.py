"""Live vs compacted search while an index grows by many small commits under the real merge policy.

Usage: python -m benchmarks.growth [--slides 30000] [--commit 500] [--plan SIZES] [--every 1] [--queries 40]
       [--warmup 10] [--dim 128] [--k 8] [--patches 10] [--threads 1] [--work DIR] [--out out/bench_growth]
       python -m benchmarks.growth --pairs LIVE:COMPACTED[,…] [--queries 40] [--warmup 10] [--out DIR]

The synthetic collection of benchmarks/search.py is committed ``--commit`` slides at a time through the store's
writer, each commit followed by the pipeline's ``auto_merge`` and vacuum, as `slidesearch index` does. After
every ``--every``-th commit a copy of the index is compacted (what `slidesearch compact` does: one segment, the
same quantizers), and each query type (text, slide, patch), unfiltered and filtered, is timed on both through
the search API: live and compacted calls alternate query by query (same queries, same order), so a change of
load hits both. Reported per state: segments, FAISS layout, API p50 live and compacted and their ratio; and
the worst ratio seen. ``--pairs`` times existing pairs of indexes the same way (a size too large to grow here:
the live states benchmarks/search.py --segments writes against their compacted copies, or a ``--plan`` state).
``--plan 210000,9x10000,9x1000`` commits those numbers of slides instead (a state the merge policy allows with
many segments, built in minutes where growing commit by commit would take hours); ``--every 0`` measures nothing and
leaves ``--work``/live and its compacted copy ``--work``/compacted to time later with ``--pairs`` (build under load,
time alone). Writes bench_growth.json and bench_growth.md into ``--out``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


from indexer.store.compact import auto_merge, compact, vacuum  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402
from benchmarks.common import machine_description, save_result  # noqa: E402
from retrieval.search import SlideSearcher  # noqa: E402
from benchmarks.search import QUERY_TYPES, VectorEncoder, make_queries  # noqa: E402
from benchmarks.synthetic_store import WHERE, SyntheticCollection, SyntheticSpec  # noqa: E402


def api_call(searcher: SlideSearcher, qtype: str, top: int, where: str | None):
    """The search API call of ``qtype`` (as benchmarks/search.py times it)."""
    return {"text": lambda q: searcher.search_text_vector(q, top, where),
            "slide": lambda q: searcher.search_slide(q, top, where),
            "patch": lambda q: searcher.search_patch(q, top, where)}[qtype]


def paired_p50(live: SlideSearcher, compacted: SlideSearcher, queries: dict, top: int, warmup: int) -> list[dict]:
    """API p50 (ms) of every (query type, filter) cell on both indexes, their calls alternating query by query."""
    rows = []
    for qtype in QUERY_TYPES:
        for where in (None, WHERE):
            calls = (api_call(live, qtype, top, where), api_call(compacted, qtype, top, where))
            times: tuple[list, list] = ([], [])
            for i, q in enumerate(queries[qtype]):
                for j in ((0, 1) if i % 2 else (1, 0)):  # who goes first alternates too
                    start = time.perf_counter()
                    calls[j](q)
                    if i >= warmup:
                        times[j].append(time.perf_counter() - start)
            p50 = [1e3 * float(np.median(t)) for t in times]
            rows.append({"type": qtype, "where": where, "queries": len(times[0]), "live_p50_ms": round(p50[0], 3),
                         "compacted_p50_ms": round(p50[1], 3), "ratio": round(p50[0] / p50[1], 3)})
    return rows


def patch_recall(searcher: SlideSearcher, queries: np.ndarray, k: int = 10) -> float:
    """Recall@k of the searcher's patch index (what `search patch` searches) against exact search over every live
    patch, for ``queries`` that are not indexed vectors (ties at rank k count as hits)."""
    from indexer import vectors as vi
    from indexer.vectors.exact import exact_topk, tied_recall
    from indexer.store.segments import SegmentFiles

    snapshot = searcher.catalog.snapshot
    files = [SegmentFiles(folder) for folder in snapshot.segment_dirs()]
    features = np.concatenate([f.features for f in files])
    rows = np.concatenate([f.patch_rows() for f in files])
    scores, _ = exact_topk(queries, features, k)
    found = vi.search(searcher.catalog.faiss("patches"), queries, k)[1]
    order = np.argsort(rows)
    gather = lambda ids: features[order[np.searchsorted(rows[order], ids)]].astype(np.float32)  # noqa: E731
    return round(tied_recall(queries, found, gather, scores[:, k - 1]), 4)


def layout(root: Path) -> dict:
    """Segments (patches each), the FAISS factories per index of the live version, and the patch index's recall
    as the version records it (the lowest segment's, after the re-rank where there is one)."""
    from indexer.store.reader import Snapshot

    snapshot = Snapshot(root)
    try:
        manifest = snapshot.manifest()
        patches = manifest["indexes"].get("patches", {})
        return {"segments": len(snapshot.version.segments),
                "segment_patches": [s["patches"] for s in snapshot.version.segments],
                "factories": {name: e["factory"] for name, e in manifest["indexes"].items()},
                "recorded_patch_recall": patches.get("recall_at_10_reranked", patches.get("recall_at_10"))}
    finally:
        snapshot.close()


def measure(root: Path, work: Path, n_queries: int, warmup: int, top: int, seed: int) -> dict:
    """Compact a copy of ``root`` and time both (see :func:`compare`)."""
    copy = work / "compacted"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(root, copy)
    start = time.perf_counter()
    compact(copy)
    compact_s = time.perf_counter() - start
    state = {**compare(root, copy, n_queries, warmup, top, seed), "compact_s": round(compact_s, 2)}
    shutil.rmtree(copy, ignore_errors=True)
    return state


def read_once(root: Path, block: int = 16 << 20) -> None:
    """Read every file under ``root`` once, so that the page cache holds it as it holds an index just written
    (a compacted copy is written last: unwarmed, the live index alone would pay for disk reads at 3·10⁵ slides)."""
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        with open(path, "rb", buffering=0) as fh:
            while fh.read(block):
                pass


def compare(live_root: Path, compacted_root: Path, n_queries: int, warmup: int, top: int, seed: int) -> dict:
    """Paired API timing (:func:`paired_p50`) and patch recall of two indexes of one collection, their layouts;
    both indexes' files are read once first (:func:`read_once`)."""
    read_once(live_root)
    read_once(compacted_root)
    live = SlideSearcher(live_root, encoder=VectorEncoder())
    compacted = SlideSearcher(compacted_root, encoder=VectorEncoder())
    try:
        queries = make_queries(compacted, n_queries + warmup, seed)
        cells = paired_p50(live, compacted, queries, top, warmup)
        held_out = np.stack(queries["patch"]).astype(np.float32)  # noisy copies of sub-vectors: never indexed
        recall = {"live": patch_recall(live, held_out), "compacted": patch_recall(compacted, held_out)}
    finally:
        live.catalog.snapshot.close()
        compacted.catalog.snapshot.close()
    return {"live": layout(live_root), "compacted": layout(compacted_root), "cells": cells,
            "patch_recall_at_10": recall}


def pairs(specs: list[str], n_queries: int, warmup: int, top: int, threads: int, seed: int = 0) -> dict:
    """``--pairs``: :func:`compare` for each ``LIVE:COMPACTED`` pair of existing index directories."""
    import faiss

    if threads:
        faiss.omp_set_num_threads(threads)
    states, load = [], [os.getloadavg()[0]]
    for i, spec in enumerate(specs, 1):
        live, _, compacted = spec.partition(":")
        states.append({"commit": i, "slides": None, "pair": spec, **compare(Path(live), Path(compacted), n_queries,
                                                                              warmup, top, seed)})
        load.append(os.getloadavg()[0])
    config = {"pairs": specs, "queries": n_queries, "warmup": warmup, "top": top, "threads": threads, "where": WHERE,
              "seed": seed}
    return {"config": config, "machine": machine_description(), "load_avg_1min": load, "commits": [],
            **_worst(states)}


def plan_bounds(plan: str) -> list[int]:
    """Slide bounds of the commits of a ``--plan`` (``N`` or ``COUNTxN`` items, comma-separated).

    >>> plan_bounds("100,2x10,5")
    [0, 100, 110, 120, 125]
    """
    sizes = []
    for item in plan.split(","):
        count, _, size = item.rpartition("x")
        sizes += [int(float(size))] * int(count or 1)
    return [0, *np.cumsum(sizes).tolist()]


def run(n_slides=30_000, commit=500, every=1, n_queries=40, warmup=10, dim=128, k=8, patches=10, top=10,
        threads=1, work=None, seed=0, show_progress=True, plan: str = "") -> dict:
    """Grow the collection commit by commit (``commit`` slides each, or the sizes of ``plan``), measuring live vs
    compacted after every ``every``-th commit (0: none; the index and a compacted copy stay in ``work``)."""
    import faiss
    from rich.progress import Progress

    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="bench_growth_"))
    root = work / "live"
    shutil.rmtree(root, ignore_errors=True)
    bounds = plan_bounds(plan) if plan else list(range(0, n_slides, commit)) + [n_slides]
    n_slides = bounds[-1]
    spec = SyntheticSpec(n_slides, dim, k, patches, seed)
    data = SyntheticCollection(spec, root)
    states, commits, load = [], [], [os.getloadavg()[0]]
    build_threads = faiss.omp_get_max_threads()
    try:
        with IndexWriter(root, create=True) as writer:
            data.create(writer)
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("growth", total=len(bounds) - 1)
            for i, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:]), 1):
                start = time.perf_counter()
                with IndexWriter(root) as writer:
                    data.append(writer, lo, hi)
                    appended, timings = time.perf_counter() - start, dict(writer.version.timings)
                    merges = auto_merge(writer)
                    if merges:
                        vacuum(writer.paths, writer.version)
                commits.append({"commit": i, "slides": hi, "append_s": round(appended, 2), "merges": merges,
                                "total_s": round(time.perf_counter() - start, 2),
                                "backfill_s": timings.get("backfill", 0.0)})
                if every and (i % every == 0 or hi == n_slides):
                    progress.update(task, description=f"{hi:,} slides: live vs compacted")
                    if threads:
                        faiss.omp_set_num_threads(threads)
                    states.append({"commit": i, "slides": hi,
                                   **measure(root, work, n_queries, warmup, top, seed + i)})
                    faiss.omp_set_num_threads(build_threads)
                    load.append(os.getloadavg()[0])
                progress.advance(task)
        if not every:
            copy = work / "compacted"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(root, copy)
            compact(copy)
    finally:
        if own:
            shutil.rmtree(work, ignore_errors=True)
    config = {"slides": n_slides, "commit": commit, "plan": plan, "every": every, "queries": n_queries, "warmup": warmup,
              "dim": dim, "k": k, "patches": patches, "top": top, "threads": threads, "where": WHERE, "seed": seed}
    return {"config": config, "machine": machine_description(), "load_avg_1min": load, "commits": commits,
            **_worst(states)}


def _worst(states: list[dict]) -> dict:
    """The states, the worst live/compacted ratio of any cell (and where), and the worst of each cell."""
    if not states:
        return {"states": [], "worst": None, "worst_by_cell": {}}
    worst = max(((s, c) for s in states for c in s["cells"]), key=lambda sc: sc[1]["ratio"])
    per_cell = {}
    for s in states:
        for c in s["cells"]:
            key = f"{c['type']}{' filtered' if c['where'] else ''}"
            per_cell[key] = max(per_cell.get(key, 0.0), c["ratio"])
    return {"states": states, "worst": {"ratio": worst[1]["ratio"], "state": worst[0]["commit"],
                                        "slides": worst[0]["slides"], "cell": worst[1]}, "worst_by_cell": per_cell}


def markdown(result: dict) -> str:
    """The worst ratios, then one row per measured state (or pair)."""
    c, w = result["config"], result["worst"]
    lines = [f"Command: `{result.get('command', '')}`", "",
             f"Machine: {result['machine']}; 1-min load average: {min(result['load_avg_1min']):.1f}–"
             f"{max(result['load_avg_1min']):.1f}", ""]
    timing = (f"{c['queries']} queries per cell after {c['warmup']} warm-up, live and compacted alternating; top "
              f"{c['top']}; {c['threads'] or 'default'} FAISS thread(s).")
    if result["commits"]:
        spent = [x["total_s"] for x in result["commits"]]
        sizes = f"in commits of {c['plan']} slides" if c.get("plan") else f"{c['commit']:,} at a time"
        lines += [f"{c['slides']:,} synthetic slides (d = {c['dim']}, K = {c['k']}, {c['patches']} patches each) "
                  f"committed {sizes} with auto-merge; {len(result['states'])} states measured, "
                  f"{timing} Commit (+ merge) seconds: median {np.median(spent):.1f}, max {max(spent):.1f}.", ""]
        if w is None:
            return "\n".join(lines + ["No state measured (--every 0): the index and its compacted copy are in "
                                       "--work (live, compacted), to time with --pairs."]) + "\n"
        where = f"after commit {w['state']}, {w['slides']:,} slides"
    else:
        lines += [f"{len(result['states'])} pairs of existing indexes (live : compacted), {timing}", ""]
        where = f"pair {w['state']}"
    lines += [f"**Worst live / compacted API p50: {w['ratio']:.2f}×** ({w['cell']['type']}"
              f"{' filtered' if w['cell']['where'] else ''}, {where}). "
              "Worst per cell: " + ", ".join(f"{k} {v:.2f}×" for k, v in result["worst_by_cell"].items()) + ".", "",
              "| state | segments (patches) | live patches index | " +
              " | ".join(f"{t}{' filt.' if f else ''} live / comp. ms (×)" for t in QUERY_TYPES for f in (0, 1)) +
              " | patch recall@10 live / comp. (recorded live / comp.) |", "|" + "---|" * 10]
    for s in result["states"]:
        cells = " | ".join(f"{x['live_p50_ms']:.2f} / {x['compacted_p50_ms']:.2f} ({x['ratio']:.2f})" for x in s["cells"])
        sizes = s["live"]["segment_patches"]
        patches = "+".join(map(str, sizes)) if len(sizes) <= 12 else f"{len(sizes)} × ~{int(np.median(sizes)):,}"
        r, rec = s["patch_recall_at_10"], (s["live"]["recorded_patch_recall"], s["compacted"]["recorded_patch_recall"])
        state = (f"{s['commit']}: {s['slides']:,} slides" if s.get("pair") is None
                 else " : ".join(Path(p).name for p in s["pair"].split(":")))
        lines.append(f"| {state} | {s['live']['segments']} ({patches}) | `{s['live']['factories'].get('patches', '')}` "
                     f"| {cells} | {r['live']:.3f} / {r['compacted']:.3f} ({rec[0]:.3f} / {rec[1]:.3f}) |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Parse options, run, write bench_growth.json and .md into --out, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=float, default=30_000, help="slides at the end")
    parser.add_argument("--commit", type=float, default=500, help="slides per commit")
    parser.add_argument("--plan", default="", help="commit sizes instead of --slides/--commit, e.g. 210000,9x10000")
    parser.add_argument("--every", type=int, default=1, help="measure after every N-th commit (and the last); 0: "
                                                             "none, keep --work/live and --work/compacted")
    parser.add_argument("--queries", type=int, default=40, help="timed queries per cell and index")
    parser.add_argument("--warmup", type=int, default=10, help="untimed queries per cell and index first")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension d")
    parser.add_argument("--k", type=int, default=8, help="prototypes K (slide vectors are K·d)")
    parser.add_argument("--patches", type=int, default=10, help="patches per slide")
    parser.add_argument("--top", type=int, default=10, help="hits per query")
    parser.add_argument("--threads", type=int, default=1, help="FAISS threads while timing (0 = default)")
    parser.add_argument("--work", default=None, help="folder for the indexes (default: a temporary one, removed)")
    parser.add_argument("--out", default="out/bench_growth", help="folder for bench_growth.json and .md")
    parser.add_argument("--pairs", default="", help="LIVE:COMPACTED[,LIVE:COMPACTED…]: only time these existing "
                                                    "index pairs (e.g. benchmarks/search.py --keep indexes)")
    args = parser.parse_args(argv)
    if args.pairs:
        result = pairs(args.pairs.split(","), args.queries, args.warmup, args.top, args.threads)
    else:
        result = run(int(args.slides), int(args.commit), args.every, args.queries, args.warmup, args.dim, args.k,
                     args.patches, args.top, args.threads, args.work, plan=args.plan)
    result["command"] = "python -m benchmarks.growth " + " ".join(argv if argv is not None else sys.argv[1:])
    return save_result(result, Path(args.out), "bench_growth", markdown)


if __name__ == "__main__":
    main()
