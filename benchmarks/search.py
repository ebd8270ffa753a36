"""Search API latency (text, slide, patch queries) against the FAISS searches inside it, on synthetic indexes.

Usage: python -m benchmarks.search [--sizes 1000,10000,100000] [--dim 128] [--k 8] [--patches 10]
       [--queries 200] [--flat-at 100000] [--threads 1] [--encoder tiny|none] [--segments 1,10] [--keep DIR]
       [--out DIR]

Each size gets an index directory written straight from synthetic vectors (no slides, no encoder) with the
tables and FAISS files the pipeline writes, FAISS kinds as ``choose_index`` picks them (plus all-Flat at
``--flat-at``). The API calls are timed while a recorder keeps the ``vector_index.search`` calls they make;
those calls are then replayed through ``vector_index.search`` and as bare FAISS calls (:func:`raw_faiss_call`:
FAISS alone, selector prebuilt; a compressed index's exact re-rank is not part of it), so API / bare is the cost
of everything around FAISS. ``--keep DIR`` reuses indexes written there, and says which commit wrote them.
``--segments`` writes each index in that many equal commits (live segments, as a growing index has them) to
compare with one.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np


from indexer import vectors as vi
from indexer.aggregation.aggregate import l2_normalize  # noqa: E402
from benchmarks.common import header, kept, machine_description, provenance, save_result  # noqa: E402
from retrieval.search import SlideSearcher  # noqa: E402
from benchmarks.synthetic_store import (  # noqa: E402,F401 (the collection's model, used by scale.py and serve.py too)
    CENTRES_PER_PROTOTYPE, N_LABELS, WHERE, SyntheticSpec, synthetic_index)

QUERY_TYPES = ("text", "slide", "patch")
TARGET_SLIDES, TARGET_RATIO = 100_000, 1.5  # issue #6: API p50 ≤ 1.5× the bare FAISS search at 100k slides

class VectorEncoder:
    """Stands in for the image encoder: the "image" given to ``search_patch`` is already its embedding."""

    @staticmethod
    def encode_images(images) -> np.ndarray:
        return np.stack(images).astype(np.float32)


@contextmanager
def recorded_searches():
    """Collect every ``vector_index.search`` call made inside as (index, queries, k, allowed ids, returned ids,
    seconds it took there).

    Arguments are kept by reference (the API builds fresh arrays per call), so recording costs ~1 µs a call.
    Calls made inside another recorded call (a segmented index's per-segment searches) are not kept.
    """
    calls, original, depth = [], vi.search, [0]

    def record(index, queries, k, allowed_ids=None):
        depth[0] += 1  # a segmented index searches its parts through vi.search too: keep the outer call only
        start = time.perf_counter()
        try:
            scores, ids = original(index, queries, k, allowed_ids)
        finally:
            depth[0] -= 1
        if depth[0] == 0:
            calls.append((index, queries, k, allowed_ids, ids, time.perf_counter() - start))
        return scores, ids

    vi.search = record
    try:
        yield calls
    finally:
        vi.search = original


def raw_faiss_call(index, queries, k, allowed):
    """A closure making only the FAISS calls behind ``vector_index.search(index, queries, k, allowed)``: every
    selector and parameter object is built here, before the timing, and no project code runs inside it.

    - A FAISS index: ``index.search``; with ``allowed``, FAISS's own filtered search (the selector and widened
      nprobe/efSearch the API would pass), also where the API scores a small allowed set exactly in NumPy
      instead, so bare and API can differ.
    - A segmented index: that for each segment, with its share of the allowed ids.
    - A re-ranked (compressed) index: its inner FAISS search of the candidate pool alone; the exact re-rank from
      the stored vectors (disk reads and NumPy) is project code and not part of the baseline.
    """
    from indexer.store.rerank import RerankedIndex

    q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
    allowed = None if allowed is None else np.unique(np.asarray(allowed, np.int64))
    if isinstance(index, RerankedIndex):
        return raw_faiss_call(index.inner, q, max(1, min(max(k, index.pool), index.inner.ntotal)), allowed)
    if isinstance(index, vi.SegmentedIndex):  # one bare search per segment, each with its share of the ids
        bounds = np.r_[index.starts[1:], np.iinfo(np.int64).max]
        shares = [None if allowed is None else allowed[(allowed >= lo) & (allowed < hi)]
                  for lo, hi in zip(index.starts, bounds)]
        calls = [raw_faiss_call(part, q, k, share) for part, share in zip(index.parts, shares) if part.ntotal]
        return lambda: [call() for call in calls]
    if isinstance(index, vi.CompositeIndex):
        raise TypeError(f"no bare FAISS call is known for a {type(index).__name__}")
    if allowed is None:
        return lambda: index.search(q, min(k, index.ntotal))
    if allowed.size == 0:
        return lambda: None
    params = vi.filter_params(index, allowed)
    if params is None:  # an index that takes no selector (a GPU one): the API over-fetches, starting with 4k
        return lambda: index.search(q, min(4 * k, index.ntotal))
    return lambda: index.search(q, min(k, index.ntotal, allowed.size), params=params)


def _elapsed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_cell(searcher: SlideSearcher, qtype: str, queries: list, top: int, where: str | None, warmup: int,
              budget_s: float) -> dict:
    """p50/p99 per query of the API call, of its ``vector_index.search`` calls and of their bare FAISS searches.

    Three passes over the same queries in the same order (API, then the recorded calls replayed through
    ``vector_index.search``, then as bare ``index.search`` with the selector prebuilt), so every pass sees
    the same cache state. The replays run back to back, so FAISS finds its data warmer than inside the API
    call, where the work around it evicts some; ``inside`` is what the same ``vector_index.search`` calls
    took during the API pass. Warm-up stops after ``budget_s / 4`` and the API pass after ``budget_s / 3``
    (at least one query), so a pathologically slow cell reports fewer queries instead of running for hours.
    """
    api = {"text": lambda q: searcher.search_text_vector(q, top, where),
           "slide": lambda q: searcher.search_slide(q, top, where),
           "patch": lambda q: searcher.search_patch(q, top, where)}[qtype]
    began = time.perf_counter()
    for q in queries[len(queries) - warmup:]:  # warm-up queries are not timed later
        api(q)
        if time.perf_counter() - began > budget_s / 4:
            break
    t_api, recorded, consistent, began = [], [], [], time.perf_counter()
    for q in queries[:len(queries) - warmup]:
        with recorded_searches() as calls:
            start = time.perf_counter()
            result = api(q)
            t_api.append(time.perf_counter() - start)
        recorded.append(calls)
        consistent.append(_consistent(searcher, qtype, result, calls))
        if time.perf_counter() - began > budget_s / 3:
            break
    t_search = [_elapsed(lambda: [vi.search(*c[:4]) for c in calls]) for calls in recorded]
    t_raw, t_main, per_call = [], [], np.zeros(max(map(len, recorded)))
    for calls in recorded:
        raw = [raw_faiss_call(*c[:4]) for c in calls]
        times = [_elapsed(fn) for fn in raw]
        t_raw.append(sum(times))
        t_main.append(times[0])
        per_call[:len(times)] += times
    ms = lambda xs, q: 1e3 * float(np.percentile(xs, q))  # noqa: E731
    row = {"type": qtype, "where": where, "queries": len(t_api), "faiss_calls": float(np.mean([len(c) for c in recorded])),
           "consistent": float(np.mean(consistent)), "raw_ms_by_call": (1e3 * per_call / len(recorded)).round(3).tolist()}
    t_inside = [sum(c[5] for c in calls) for calls in recorded]
    for name, xs in (("api", t_api), ("search", t_search), ("raw", t_raw), ("main", t_main), ("inside", t_inside)):
        row |= {f"{name}_p50_ms": ms(xs, 50), f"{name}_p99_ms": ms(xs, 99)}
    return row | {"api_over_search": row["api_p50_ms"] / row["search_p50_ms"],
                  "api_over_raw": row["api_p50_ms"] / row["raw_p50_ms"],
                  "api_over_inside": row["api_p50_ms"] / row["inside_p50_ms"]}


def _consistent(searcher: SlideSearcher, qtype: str, result, calls) -> bool:
    """The API's hits come from the FAISS results it searched (slide: exactly the slides search's ids)."""
    rows = [h.slide_row for h in result.hits]
    found = [c[4][0][c[4][0] >= 0] for c in calls]
    if qtype == "slide":
        return rows == found[0].tolist()
    arrays = searcher.arrays
    kp = arrays.n_prototypes
    pools = {"text": lambda: set((found[0] // kp).tolist()) | set(arrays.patch_slide[found[1]].tolist()),
             "patch": lambda: set(arrays.patch_slide[found[0]].tolist())}
    return len(rows) > 0 and set(rows) <= pools[qtype]()


def make_queries(searcher: SlideSearcher, n: int, seed: int) -> dict[str, list]:
    """Random slide_ids, and vectors near a random sub-vector of a random slide: text-like (less noise) and
    patch-like (the patches' own noise)."""
    rng = np.random.default_rng(seed + 1)
    arrays = searcher.arrays
    blocks = arrays.slide_vectors(searcher.catalog, rng.integers(len(arrays.mass), size=n), "slides")
    picks = l2_normalize(blocks.reshape(n, arrays.n_prototypes, -1)[np.arange(n), rng.integers(arrays.n_prototypes, size=n)])
    noise = rng.standard_normal(picks.shape) / np.sqrt(picks.shape[1])
    text, patch = l2_normalize(picks + 0.1 * noise), l2_normalize(picks + 0.8 * noise)
    ids = sorted(arrays.ids)
    return {"text": list(text), "slide": [ids[i] for i in rng.choice(len(ids), size=n, replace=len(ids) < n)],
            "patch": list(patch)}


def encoding_costs(name: str, threads: int = 0, repeats: int = 20) -> dict:
    """Median ms of embedding one text query (4 prompt templates) and one 224-px image with encoder ``name``."""
    import torch
    from PIL import Image

    from indexer.models.encoders import load_encoder
    from retrieval.query.parse import embed_text_query

    if threads:
        torch.set_num_threads(threads)
    encoder = load_encoder(name, device="cpu")
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (224, 224, 3), dtype=np.uint8))
    jobs = {"text_ms": lambda: embed_text_query(encoder, "poorly differentiated adenocarcinoma with necrosis"),
            "image_ms": lambda: encoder.encode_images([image])}
    out = {"encoder": name}
    for key, fn in jobs.items():
        fn()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[key] = 1e3 * float(np.median(times))
    return out


def run(sizes, dim=128, k=8, patches=10, n_queries=200, top=10, flat_at=(), flat_queries=50, budget_s=90.0,
        encoder="tiny", keep=None, seed=0, warmup=20, threads=1, show_progress=True, segments=(1,)) -> dict:
    """Build (or reuse) each synthetic index and time every (size, FAISS variant, query type, filter) cell.

    ``threads``: OpenMP threads for FAISS (and torch threads for the encoding figure) while timing; 0 keeps
    the libraries' defaults. Index building always uses the defaults.
    """
    import faiss
    from rich.progress import Progress

    work = Path(keep) if keep else Path(tempfile.mkdtemp(prefix="bench_search_api_"))
    reuse_note = kept(work) if keep else None
    plan = [(n, variant, segs) for n in sizes for variant in (("auto", "flat") if n in flat_at else ("auto",))
            for segs in segments]
    rows, indexes, load = [], {}, [os.getloadavg()[0]]
    try:
        with Progress(disable=not show_progress, transient=True) as progress:
            task = progress.add_task("search benchmark", total=len(plan) * 2 * len(QUERY_TYPES))
            for n, variant, segs in plan:
                progress.update(task, description=f"writing the {variant} index of {n:,} slides in {segs} segments")
                name = f"n{n}_d{dim}_k{k}_p{patches}_s{seed}_{variant}" + (f"_seg{segs}" if segs > 1 else "")
                root = work / name
                start, reused = time.perf_counter(), (root / "CURRENT").is_file()
                manifest = synthetic_index(root, SyntheticSpec(n, dim, k, patches, seed, segs), flat=variant == "flat")
                indexes[f"{n}/{variant}" + (f"/{segs} segments" if segs > 1 else "")] = {name: e["factory"] for name, e in manifest["indexes"].items()} | {
                    "build_s": time.perf_counter() - start, "faiss_build_s": manifest["timings"], "reused": reused}
                searcher = SlideSearcher(root, encoder=VectorEncoder())
                build_threads = faiss.omp_get_max_threads()
                if threads:
                    faiss.omp_set_num_threads(threads)
                count = flat_queries if variant == "flat" else n_queries
                queries = make_queries(searcher, count + warmup, seed)
                for qtype in QUERY_TYPES:
                    for where in (None, WHERE):
                        progress.update(task, description=f"{n:,} slides, {variant}: {qtype} where={where}")
                        cell = time_cell(searcher, qtype, queries[qtype], top, where, warmup, budget_s)
                        rows.append({"n_slides": n, "n_patches": n * patches, "variant": variant, "segments": segs} | cell)
                        progress.advance(task)
                del searcher, queries
                faiss.omp_set_num_threads(build_threads)
                load.append(os.getloadavg()[0])
    finally:
        if not keep:
            shutil.rmtree(work, ignore_errors=True)
    config = {"sizes": list(sizes), "dim": dim, "k": k, "patches": patches, "queries": n_queries, "top": top,
              "warmup": warmup, "flat_at": list(flat_at), "flat_queries": flat_queries, "budget_s": budget_s,
              "where": WHERE, "seed": seed, "threads": threads, "segments": list(segments)}
    return {"config": config, "machine": machine_description(), "load_avg_1min": load, "indexes": indexes,
            "kept": reuse_note,
            "encoding": encoding_costs(encoder, threads) if encoder != "none" else None, "results": rows}


def markdown(result: dict) -> str:
    """Markdown tables: FAISS kinds per index, then API vs FAISS latency per cell."""
    c = result["config"]
    lines = [header(result["provenance"]) if "provenance" in result else f"Command: `{result.get('command', '')}`",
             "", f"FAISS: {result['machine']}; 1-min load average "
             f"during the run: {', '.join(f'{x:.1f}' for x in result['load_avg_1min'])}", "",
             *([f"**{result['kept']}**", ""] if result.get("kept") else []),
             f"Synthetic: d = {c['dim']}, K = {c['k']} (slide vectors {c['k'] * c['dim']}-d), {c['patches']} patches "
             f"per slide; up to {c['queries']} timed queries per cell ({c['flat_queries']} with Flat) after "
             f"{c['warmup']} warm-up, {c['budget_s']:g} s budget per cell; top {c['top']}; "
             f"{c['threads'] or 'default'} FAISS thread(s) while timing. Bare FAISS = the FAISS calls alone (a "
             "filtered search through FAISS's selector even where the API scores a small allowed set exactly; a "
             "compressed index's candidate search without its exact re-rank).", "",
             "| index | slides | slides_mean | subvectors | patches | build s |", "|---|---|---|---|---|---|"]
    for key, e in result["indexes"].items():
        built = "reused (--keep)" if e.get("reused") else f"{e['build_s']:.0f}"
        lines.append(f"| {key} | `{e['slides']}` | `{e['slides_mean']}` | `{e['subvectors']}` | `{e['patches']}` "
                     f"| {built} |")
    lines += ["", "| slides | FAISS | segments | query | filter | queries | FAISS calls | API p50 / p99 ms "
              "| vector_index.search p50 / p99 ms | bare FAISS p50 / p99 ms | API / search | API / bare | "
              "search inside the API p50 ms | API / inside | slides search alone p50 ms |", "|" + "---|" * 15]
    for r in result["results"]:
        alone = f"{r['main_p50_ms']:.2f}" if r["type"] == "slide" else "—"
        lines.append(
            f"| {r['n_slides']:,} | {r['variant']} | {r.get('segments', 1)} | {r['type']} | {'`' + r['where'] + '`' if r['where'] else '—'} "
            f"| {r['queries']} | {r['faiss_calls']:.1f} | {r['api_p50_ms']:.2f} / {r['api_p99_ms']:.2f} "
            f"| {r['search_p50_ms']:.2f} / {r['search_p99_ms']:.2f} | {r['raw_p50_ms']:.2f} / {r['raw_p99_ms']:.2f} "
            f"| {r['api_over_search']:.2f}× | **{r['api_over_raw']:.2f}×** "
            f"| {r['inside_p50_ms']:.2f} | {r['api_over_inside']:.2f}× | {alone} |")
    at_target = [r for r in result["results"] if r["n_slides"] >= TARGET_SLIDES and r["variant"] == "auto"]
    if at_target:
        over = [f"{r['type']}{' filtered' if r['where'] else ''} {r['api_over_raw']:.2f}×" for r in at_target
                if r["api_over_raw"] > TARGET_RATIO]
        lines += ["", f"Target (issue #6): API ≤ {TARGET_RATIO}× bare FAISS at p50 with {TARGET_SLIDES:,} slides: "
                  + (f"**NOT met** for {', '.join(over)}." if over else "**met** in every cell.")]
    if result.get("encoding"):
        e = result["encoding"]
        lines += ["", f"Query encoding with `{e['encoder']}` (not in the API figures): text query (4 prompt templates) "
                  f"{e['text_ms']:.1f} ms, one 224-px image {e['image_ms']:.1f} ms (medians)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    """Parse options, run every cell, write bench_search_api.json and .md into --out, print the Markdown."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000", help="comma-separated numbers of slides")
    parser.add_argument("--dim", type=int, default=128, help="embedding dimension d (tiny encoder: 128)")
    parser.add_argument("--k", type=int, default=8, help="prototypes K (slide vectors are K·d)")
    parser.add_argument("--patches", type=int, default=10, help="patches per slide")
    parser.add_argument("--queries", type=int, default=200, help="timed single queries per cell")
    parser.add_argument("--top", type=int, default=10, help="hits per query (the API's k)")
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries per cell before timing")
    parser.add_argument("--budget", type=float, default=90.0, help="seconds per cell before it stops early")
    parser.add_argument("--flat-at", default="100000", help="sizes also measured with exact Flat indexes ('' = none)")
    parser.add_argument("--flat-queries", type=int, default=50, help="timed queries per Flat cell")
    parser.add_argument("--threads", type=int, default=1, help="FAISS/torch threads while timing (0 = defaults)")
    parser.add_argument("--encoder", default="tiny", help="encoder for the query-encoding side figure, or 'none'")
    parser.add_argument("--segments", default="1", help="comma-separated numbers of live segments to write the index in")
    parser.add_argument("--keep", default=None, help="folder to keep (and reuse) the synthetic indexes in")
    parser.add_argument("--out", default="out/bench_search_api", help="folder for bench_search_api.json and .md")
    args = parser.parse_args(argv)
    sizes = [int(float(s)) for s in args.sizes.split(",") if s]
    flat_at = [int(float(s)) for s in args.flat_at.split(",") if s]
    result = run(sizes, args.dim, args.k, args.patches, args.queries, args.top, flat_at, args.flat_queries,
                 args.budget, args.encoder, args.keep, warmup=args.warmup, threads=args.threads,
                 segments=[int(x) for x in args.segments.split(",") if x])
    result["provenance"] = provenance("benchmarks/search.py", argv)
    result["command"] = result["provenance"]["command"]
    return save_result(result, Path(args.out), "bench_search_api", markdown)


if __name__ == "__main__":
    main()
