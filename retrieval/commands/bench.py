"""`slidesearch bench ...`: benchmark commands (search speed here; retrieval and index quality/speed join later)."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from retrieval.cli_app import app, guarded, print_json

bench_app = typer.Typer(
    help="Benchmarks that write JSON + Markdown + PNG reports: search (FAISS speed), retrieval, index.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("search")
@guarded
def search(
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

    from retrieval.bench_search import SearchBenchConfig, markdown_report, run_search_benchmark, write_search_report

    config = SearchBenchConfig(
        sizes=parse_ints(sizes, "--sizes"), dim=dim, kinds=tuple(split_items(kinds)), k=k, n_queries=queries,
        n_latency=latency_queries, seconds_per_point=seconds_per_point, sweep=sweep,
        max_build_s=max_build_seconds, skip=tuple(skip or ()), use_gpu=gpu, seed=seed)
    command = (f"slidesearch bench search --out {out} --sizes {sizes} --dim {dim} --kinds {kinds} -k {k} "
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


def split_items(text: str) -> list[str]:
    """Non-empty, stripped items of a comma-separated option value."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'1,5,10' or '1e4,1e5' → integers; a one-line error naming ``option`` otherwise."""
    from indexer.errors import QueryError

    try:
        return tuple(int(float(part)) for part in split_items(text))
    except ValueError:
        raise QueryError(f"{option} must be comma-separated numbers, got {text!r}") from None
