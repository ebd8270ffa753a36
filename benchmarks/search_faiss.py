"""FAISS search speed on synthetic clustered unit vectors: QPS, p50/p99 latency, recall@k, build time, memory.

Usage: python -m benchmarks.search_faiss --out DIR [--sizes 10000,100000,1000000] [--dim 512] [--kinds …] [--help]
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

import typer

from benchmarks.common import machine_description, read_lines
from indexer import vectors as vi
from indexer.errors import QueryError
from retrieval.cli_app import guarded, print_json
from retrieval.commands.bench import parse_ints, split_items

# Search-effort values swept per kind to trace recall against speed (the kind's default is added).
SWEEPS = {"flat": ("", ()), "ivf_flat": ("nprobe", (1, 4, 16, 64, 256)),
          "ivf_pq": ("nprobe", (1, 4, 16, 64, 256)), "hnsw": ("efSearch", (16, 32, 128, 256))}
GPU_KINDS = ("flat", "ivf_flat", "ivf_pq")  # FAISS has no GPU HNSW
REPORT_NAME = "bench_search"


@dataclass(frozen=True)
class SearchBenchConfig:
    """What to measure.

    Attributes:
        sizes: database sizes N. dim: vector dimension. kinds: index kinds (``vector_index.KINDS``).
        k: neighbours per query. n_queries: batched queries (QPS and recall@k against exact search).
        n_latency: single queries timed for p50/p99. seconds_per_point: batched searches repeat until this
            long (3 to 100 repeats, median taken); single-query timing stops after 3× this (≥ 20 timed).
        n_clusters: clusters in the synthetic data. sweep: also time the ``SWEEPS`` search-effort values.
        max_build_s: skip a configuration whose build time, extrapolated from the previous size, exceeds this.
        skip: ``"kind"`` or ``"kind@N"`` entries to skip outright. use_gpu: None = when FAISS sees a GPU.
    """

    sizes: tuple[int, ...] = (10_000, 100_000, 1_000_000)
    dim: int = 512
    kinds: tuple[str, ...] = vi.KINDS
    k: int = 10
    n_queries: int = 1_000
    n_latency: int = 200
    seconds_per_point: float = 1.0
    n_clusters: int = 256
    sweep: bool = True
    max_build_s: float = 300.0
    skip: tuple[str, ...] = ()
    use_gpu: bool | None = None
    seed: int = 0


def synthetic_embeddings(n: int, dim: int, n_clusters: int = 256, latent_dim: int = 32, seed: int = 0) -> np.ndarray:
    """Clustered float32 unit vectors resembling embeddings (low intrinsic dimension, uneven clusters).

    Cluster centres and within-cluster spread live in a random ``latent_dim``-dimensional subspace lifted to
    ``dim``; cluster sizes are Dirichlet-distributed; small isotropic noise fills the remaining dimensions.
    """
    rng = np.random.default_rng(seed)
    latent_dim = min(latent_dim, dim)
    lift = (rng.standard_normal((latent_dim, dim)) / math.sqrt(latent_dim)).astype(np.float32)
    centres = rng.standard_normal((n_clusters, latent_dim)).astype(np.float32)
    weights = rng.dirichlet(np.full(n_clusters, 2.0))
    out = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # chunks bound the temporaries at N = 10⁶
        rows = min(n, start + 100_000) - start
        z = centres[rng.choice(n_clusters, rows, p=weights)]
        z += 0.5 * rng.standard_normal((rows, latent_dim), dtype=np.float32)
        block = z @ lift + 0.3 * rng.standard_normal((rows, dim), dtype=np.float32)
        out[start:start + rows] = block / np.linalg.norm(block, axis=1, keepdims=True)
    return out


def run_search_benchmark(config: SearchBenchConfig,
                         on_step: Callable[[int, int, str], None] | None = None) -> dict:
    """Build every (N, kind, device) index, time batched and single queries, measure recall@k.

    Args:
        config: what to measure. on_step: called as ``on_step(done, total, description)`` before each step.

    Returns:
        ``{"config", "machine", "results": [row, ...], "skipped": [{"n", "kind", "device", "reason"}]}``
        where each row holds n, dim, kind, device, index, param, value, default, build_s, index_bytes,
        qps, p50_ms, p99_ms and recall_at_k.
    """
    import faiss

    _validate(config)
    devices = ["cpu"] + (["gpu"] if config.use_gpu is not False and faiss.get_num_gpus() > 0 else [])
    steps = [(n, kind, dev) for n in config.sizes for kind in config.kinds for dev in devices
             if dev == "cpu" or kind in GPU_KINDS]
    results: list[dict] = []
    skipped: list[dict] = []
    builds: dict[tuple[str, str], tuple[int, float]] = {}
    data_n = None
    for done, (n, kind, device) in enumerate(steps):
        if on_step:
            on_step(done, len(steps), f"{kind} N={n:,} ({device})")
        reason = _skip_reason(config, n, kind, device, builds.get((kind, device)))
        if reason:
            skipped.append({"n": n, "kind": kind, "device": device, "reason": reason})
            continue
        if data_n != n:
            data = synthetic_embeddings(n + config.n_queries, config.dim, config.n_clusters, seed=config.seed)
            base, queries = data[:n], data[n:]
            ids = np.arange(n, dtype=np.int64) + 10**9  # explicit ids, never row numbers
            truth = ids[faiss.knn(queries, base, min(config.k, n), metric=faiss.METRIC_INNER_PRODUCT)[1]]
            data_n = n
        choice = vi.choice_for_kind(kind, n, config.dim)
        start = time.perf_counter()
        index = vi.build_index(base, ids, choice, use_gpu=device == "gpu")
        build_s = time.perf_counter() - start
        builds[(kind, device)] = (n, build_s)
        nbytes = vi.index_nbytes(index)
        if device == "gpu":
            index = vi.to_gpu(index)
            if index is None:
                skipped.append({"n": n, "kind": kind, "device": device, "reason": "FAISS cannot move it to the GPU"})
                continue
        space = faiss.GpuParameterSpace() if device == "gpu" else faiss.ParameterSpace()
        for param, value, default in _effort_points(config, choice):
            if param:
                space.set_index_parameter(index, param, value)
            row = {"n": n, "dim": config.dim, "kind": kind, "device": device, "index": choice.describe(),
                   "param": param, "value": value, "default": default, "build_s": build_s, "index_bytes": nbytes}
            results.append(row | _time_queries(index, queries, truth, config))
        del index
    return {"config": asdict(config), "machine": machine_description(), "results": results, "skipped": skipped}


def write_search_report(result: dict, out_dir: str | os.PathLike, command: str = "") -> dict[str, Path]:
    """Write ``bench_search.json``, ``.md`` and ``.png`` (recall vs QPS) into ``out_dir``; returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"{REPORT_NAME}.{ext}" for ext in ("json", "md", "png")}
    result = result | {"command": command}
    paths["json"].write_text(json.dumps(result, indent=2) + "\n")
    paths["md"].write_text(markdown_report(result))
    _plot(result, paths["png"])
    return paths


def markdown_report(result: dict) -> str:
    """Markdown: command, machine, a table of every measured point (defaults in bold) and what was skipped."""
    k = result["config"]["k"]
    lines = [f"Command: `{result.get('command') or 'python -m benchmarks.search_faiss'}`", "",
             f"Machine: {result['machine']}", "",
             f"| N | kind | device | index | effort | build s | index MB | QPS (batch {result['config']['n_queries']}) "
             f"| p50 ms | p99 ms | recall@{k} |", "|" + "---|" * 11]
    for r in result["results"]:
        effort = f"{r['param']}={r['value']}" if r["param"] else "exact"
        cells = [f"{r['n']:,}", r["kind"], r["device"], f"`{r['index']}`", f"**{effort}**" if r["default"] else effort,
                 f"{r['build_s']:.1f}", f"{r['index_bytes'] / 2**20:.1f}", f"{r['qps']:,.0f}", f"{r['p50_ms']:.3f}",
                 f"{r['p99_ms']:.3f}", f"{r['recall_at_k']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Bold effort = the kind's default (`choice_for_kind`). QPS: one batch, all FAISS threads, median "
              "of repeats; p50/p99: one query at a time on one thread; recall against exact inner-product "
              "search on held-out queries."]
    for s in result["skipped"]:
        lines.append(f"- skipped {s['kind']} at N={s['n']:,} ({s['device']}): {s['reason']}")
    return "\n".join(lines) + "\n"


def _validate(config: SearchBenchConfig) -> None:
    unknown = sorted(set(config.kinds) - set(vi.KINDS))
    if unknown:
        raise QueryError(f"unknown index kind(s) {', '.join(unknown)}; known: {', '.join(vi.KINDS)}")
    if not config.sizes or min(config.sizes) < 1 or config.dim < 1 or config.k < 1 or config.n_queries < 1:
        raise QueryError("sizes, dim, k and the number of queries must all be positive")


def _skip_reason(config: SearchBenchConfig, n: int, kind: str, device: str, previous) -> str:
    if kind in config.skip or f"{kind}@{n}" in config.skip:
        return "skipped on request (--skip)"
    if previous is not None and previous[0] < n:
        prev_n, prev_s = previous
        growth = _build_cost(kind, n, config.dim) / _build_cost(kind, prev_n, config.dim)
        if prev_s * growth > config.max_build_s:
            return (f"estimated build {prev_s * growth:,.0f} s (from {prev_s:.1f} s at N={prev_n:,}) exceeds "
                    f"--max-build-seconds {config.max_build_s:g}")
    index_bytes = vi.estimated_bytes(kind, n, config.dim, m=vi.choice_for_kind(kind, n, config.dim).m)
    need = 2 * index_bytes + 4 * n * config.dim  # index, its serialized copy and the data
    free = _available_memory()
    if free is not None and need > free:
        return f"needs about {need / 2**30:.1f} GiB with the data, only {free / 2**30:.1f} GiB available"
    return ""


def _build_cost(kind: str, n: int, dim: int) -> float:
    """Relative build work, used to extrapolate a measured build to a larger N.

    Flat: N. HNSW: N^1.5 (insertion turns memory-bound once the graph outgrows the caches; 10⁵ → 10⁶ took
    38× here). IVF: nlist·(10 k-means passes over the training sample + N assignments); IVF-PQ adds its
    sub-quantizer training (25 passes over ≤ 256·2^nbits rows) and encoding, 2^nbits centroids each.
    """
    if kind == "flat":
        return float(n)
    if kind == "hnsw":
        return float(n) ** 1.5
    choice = vi.choice_for_kind(kind, n, dim)
    sample = vi.train_sample_size(n, choice.nlist)
    cost = choice.nlist * (10 * sample + n)
    if kind == "ivf_pq":
        centroids = 2**choice.nbits
        cost += centroids * (25 * min(sample, 256 * centroids) + n)
    return float(cost)


def _effort_points(config: SearchBenchConfig, choice: vi.IndexChoice) -> list[tuple[str, int, bool]]:
    param, values = SWEEPS[choice.kind]
    default = {"nprobe": choice.nprobe, "efSearch": choice.ef_search}.get(param, 0)
    if not param:
        return [("", 0, True)]
    limit = choice.nlist if param == "nprobe" else math.inf
    chosen = sorted({v for v in values if v <= limit} | {default}) if config.sweep else [default]
    return [(param, v, v == default) for v in chosen]


def _time_queries(index, queries: np.ndarray, truth: np.ndarray, config: SearchBenchConfig) -> dict:
    import faiss

    vi.search(index, queries[:10], config.k)  # warm-up: thread pool, caches
    times, found = [], None
    budget = config.seconds_per_point
    while not times or (len(times) < 3 and sum(times) < 10 * budget) or (sum(times) < budget and len(times) < 100):
        start = time.perf_counter()
        _, found = vi.search(index, queries, config.k)
        times.append(time.perf_counter() - start)
    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)  # one request, one core: stable under load, and how a server runs queries
    try:
        single, began = [], time.perf_counter()
        for q in queries[: config.n_latency]:
            start = time.perf_counter()
            vi.search(index, q, config.k)
            single.append(time.perf_counter() - start)
            if len(single) >= 20 and time.perf_counter() - began > 3 * budget:
                break
    finally:
        faiss.omp_set_num_threads(threads)
    recall = np.mean([len(np.intersect1d(t, f)) / len(t) for t, f in zip(truth, found)])
    return {"qps": len(queries) / float(np.median(times)), "p50_ms": 1e3 * float(np.percentile(single, 50)),
            "p99_ms": 1e3 * float(np.percentile(single, 99)), "recall_at_k": float(recall),
            "latency_samples": len(single)}


def _plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 6))
    colours = dict(zip(vi.KINDS, ("tab:blue", "tab:green", "tab:orange", "tab:red")))
    markers = dict(zip(sorted({r["n"] for r in result["results"]}), "os^Dv"))
    groups: dict[tuple, list[dict]] = {}
    for r in result["results"]:
        groups.setdefault((r["n"], vi.KINDS.index(r["kind"]), r["device"]), []).append(r)
    for (n, _, device), rows in sorted(groups.items()):
        rows = sorted(rows, key=lambda r: r["value"])  # along the nprobe / efSearch sweep
        kind = rows[0]["kind"]
        ax.plot([r["qps"] for r in rows], [r["recall_at_k"] for r in rows], color=colours[kind],
                marker=markers[n], linestyle="--" if device == "gpu" else "-", label=f"{kind} N={n:,} ({device})")
        for r in rows:
            if r["param"]:
                ax.annotate(str(r["value"]), (r["qps"], r["recall_at_k"]), fontsize=6, alpha=0.7,
                            xytext=(3, 3), textcoords="offset points")
    ax.set_xscale("log")
    ax.set_xlabel(f"queries per second (batches of {result['config']['n_queries']}, log scale)")
    ax.set_ylabel(f"recall@{result['config']['k']} vs exact search")
    ax.set_title(f"FAISS on synthetic clustered unit vectors, d={result['config']['dim']} "
                 "(labels: nprobe / efSearch)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _available_memory() -> int | None:
    for line in read_lines("/proc/meminfo"):
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def main(
    out: Path = typer.Option(..., "--out", help="Folder for bench_search.json, .md and .png."),
    sizes: str = typer.Option("10000,100000,1000000", help="Comma-separated database sizes N (1e5 style allowed)."),
    dim: int = typer.Option(512, help="Vector dimension."),
    kinds: str = typer.Option("flat,ivf_flat,hnsw,ivf_pq", help="Comma-separated index kinds to measure."),
    k: int = typer.Option(10, "-k", help="Neighbours per query; recall@k is against exact search."),
    queries: int = typer.Option(1000, help="Held-out queries, searched as one batch for QPS and recall."),
    latency_queries: int = typer.Option(200, help="Single queries timed for p50/p99 (at least 20)."),
    seconds_per_point: float = typer.Option(
        1.0, help="Batched searches repeat for about this long per point; single-query timing stops after 3×."),
    sweep: bool = typer.Option(True, help="Also time several nprobe / efSearch values (recall vs QPS curves)."),
    max_build_seconds: float = typer.Option(
        300.0, help="Skip a configuration whose build time, extrapolated from the previous size, exceeds this."),
    skip: Optional[List[str]] = typer.Option(None, help="Skip a kind or kind@N (repeatable), e.g. hnsw@1000000."),
    gpu: Optional[bool] = typer.Option(
        None, "--gpu/--no-gpu", help="Also measure on GPU (default: when FAISS sees one)."),
    seed: int = typer.Option(0, help="Seed of the synthetic data."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON instead of the table."),
) -> None:
    """FAISS speed on synthetic clustered unit vectors: QPS, p50/p99 latency, recall@k, build time, memory."""
    from rich.progress import Progress

    config = SearchBenchConfig(
        sizes=parse_ints(sizes, "--sizes"), dim=dim, kinds=tuple(split_items(kinds)), k=k, n_queries=queries,
        n_latency=latency_queries, seconds_per_point=seconds_per_point, sweep=sweep,
        max_build_s=max_build_seconds, skip=tuple(skip or ()), use_gpu=gpu, seed=seed)
    command = (f"python -m benchmarks.search_faiss --out {out} --sizes {sizes} --dim {dim} --kinds {kinds} -k {k} "
               f"--queries {queries} --latency-queries {latency_queries} --seconds-per-point {seconds_per_point:g} "
               f"--max-build-seconds {max_build_seconds:g} --seed {seed}" + ("" if sweep else " --no-sweep")
               + {None: "", True: " --gpu", False: " --no-gpu"}[gpu] + "".join(f" --skip {s}" for s in skip or ()))
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task("search benchmark", total=None)

        def on_step(done: int, total: int, description: str) -> None:
            progress.update(task, completed=done, total=total, description=description)

        result = run_search_benchmark(config, on_step=on_step)
    paths = write_search_report(result, out, command=command)
    if as_json:
        print_json(result | {"command": command, "files": {ext: str(p) for ext, p in paths.items()}})
        return
    typer.echo(markdown_report(result | {"command": command}))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


app = typer.Typer(add_completion=False)
app.command()(guarded(main))

if __name__ == "__main__":
    app()
