"""Indexing benchmark: end-to-end patches/s per encoder, time by stage, and peak memory for few vs many slides.

Usage: python -m benchmarks.index --out DIR [--slides 5,20] [--models tiny,openclip:ViT-B-16] [--vit-slides 2]
       [--vit-max-patches 24] [--slide-px 2048] [--mpp 0.5] [--workers 2] [--workdir DIR] [--json]

Each index run happens in a fresh Python subprocess (``python -m benchmarks.index --child SPEC``) so
its peak memory is its own: the parent reaps it with ``os.wait4`` and reads ``ru_maxrss``, which on Linux
is the largest resident set of the run's process and of its patch-reading worker processes (the maximum
over processes, not their sum). The child times ``run_index`` itself (model load included, interpreter
start-up excluded) and reports the pipeline's per-stage timings.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import typer

from benchmarks.common import ROOT, cpu_model, subprocess_env
from indexer.errors import UserError
from retrieval.cli_app import guarded, print_json
from retrieval.commands.bench import parse_ints

VIT = "openclip:ViT-B-16"
MEMORY_TOLERANCE = 0.10  # peak RSS "does not grow" when the larger run stays within 10 % of the smaller one


@dataclass(frozen=True)
class IndexBenchConfig:
    """What to index and with which encoders.

    Attributes:
        slide_px: side of the generated slides (level-0 px) at ``mpp``.
        mpp: microns per pixel of the generated slides.
        memory_slides: slide counts indexed with ``tiny`` to compare peak memory (the largest also gives
            tiny's throughput).
        vit_slides: slides indexed with ViT-B-16 (random weights).
        vit_max_patches: patches sampled per slide for ViT-B-16 (it runs at ~5–10 patches/s on 2 CPU cores).
        workers: patch-reading worker processes (``slidesearch index --workers``).
        models: encoders to time: ``tiny`` and/or ``openclip:ViT-B-16``.
        seed: seed of the generated cohort.
    """

    slide_px: int = 2048
    mpp: float = 0.5
    memory_slides: tuple[int, ...] = (5, 20)
    vit_slides: int = 2
    vit_max_patches: int = 24
    workers: int = 2
    models: tuple[str, ...] = ("tiny", VIT)
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [m for m in self.models if m not in ("tiny", VIT)]
        if unknown:
            raise UserError(f"unknown model {unknown[0]!r} for the index benchmark: use tiny and/or {VIT}")
        if not self.memory_slides or min(self.memory_slides) < 1 or self.vit_slides < 1 or self.vit_max_patches < 1:
            raise UserError("slide counts and --vit-max-patches must be at least 1")


def run_index_benchmark(config: IndexBenchConfig, workdir: str | Path,
                        on_step: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Generate a cohort under ``workdir`` and time one fresh-process index run per configuration.

    Returns:
        JSON-able dict: ``config``, ``runs`` (one per run: model, slides, patches, seconds, patches/s,
        timings by stage, peak RSS) and ``memory`` (peak RSS for the fewest vs most slides, and whether it grew).

    Raises:
        UserError: an index run failed (its log file is named).
    """
    from retrieval.demo.synthetic import write_cohort

    step = on_step or (lambda _: None)
    workdir = Path(workdir)
    n_max = max(config.memory_slides + ((config.vit_slides,) if VIT in config.models else ()))
    step(f"writing {n_max} synthetic slides of {config.slide_px}² px")
    csv = write_cohort(workdir / "slides", n_patients=(n_max + 1) // 2, slides_per_patient=2,
                       size=(config.slide_px, config.slide_px), seed=config.seed, mpp=config.mpp)
    slides = sorted(str(p) for p in csv.parent.glob("*.tif"))[:n_max]
    plan = []
    if "tiny" in config.models:
        plan += [{"model": "tiny", "checkpoint": None, "n_slides": n, "max_patches": None}
                 for n in sorted(set(config.memory_slides))]
    if VIT in config.models:
        plan.append({"model": VIT, "checkpoint": "random", "n_slides": config.vit_slides,
                     "max_patches": config.vit_max_patches})
    runs = []
    for i, spec in enumerate(plan):
        step(f"indexing {spec['n_slides']} slides with {spec['model']} in a fresh process ({i + 1}/{len(plan)})")
        spec = spec | {"slides": slides[: spec["n_slides"]], "metadata": str(csv), "workers": config.workers,
                       "out": str(workdir / f"index-{i}"), "result": str(workdir / f"run-{i}.json")}
        runs.append(_run_child(spec, workdir / f"run-{i}.log"))
    tiny = sorted((r for r in runs if r["model"] == "tiny"), key=lambda r: r["n_slides"])
    memory = {}
    if len(tiny) >= 2:
        low, high = tiny[0], tiny[-1]
        growth = high["peak_rss_mb"] / low["peak_rss_mb"] - 1
        memory = {"slides": [low["n_slides"], high["n_slides"]], "peak_rss_mb": [low["peak_rss_mb"], high["peak_rss_mb"]],
                  "growth": growth, "flat": growth <= MEMORY_TOLERANCE, "tolerance": MEMORY_TOLERANCE}
    return {"config": asdict(config), "cpu": cpu_model(), "cores": os.cpu_count(), "runs": runs, "memory": memory}


def _run_child(spec: dict[str, Any], log: Path) -> dict[str, Any]:
    """Run one index in a fresh interpreter; return its report with the peak RSS from ``wait4``."""
    Path(spec["result"]).unlink(missing_ok=True)
    shutil.rmtree(spec["out"], ignore_errors=True)  # a fresh index: a left-over one would be resumed, not rebuilt
    start = time.perf_counter()
    with log.open("w") as fh:
        proc = subprocess.Popen([sys.executable, "-m", "benchmarks.index", "--child", json.dumps(spec)], cwd=ROOT,
                                stdout=fh, stderr=subprocess.STDOUT, env=subprocess_env(PYTHONUNBUFFERED="1"))
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0 or not Path(spec["result"]).is_file():
        tail = log.read_text().strip().splitlines()[-1:] or ["no output"]
        raise UserError(f"index run with {spec['model']} failed (exit {proc.returncode}): {tail[0]} (log: {log})")
    child = json.loads(Path(spec["result"]).read_text())
    peak_mb = usage.ru_maxrss / 1024  # KiB on Linux
    return {
        "model": spec["model"], "n_slides": spec["n_slides"], "max_patches": spec["max_patches"],
        "patches": child["patches"], "index_seconds": child["seconds"], "process_seconds": wall,
        "patches_per_s": child["patches"] / child["seconds"],
        "embed_patches_per_s": child["patches"] / child["timings"]["embed"] if child["timings"].get("embed") else None,
        "timings": child["timings"], "peak_rss_mb": peak_mb, "main_process_rss_mb": child["self_rss_kb"] / 1024,
        "torch_threads": child["torch_threads"],
    }


def _child(spec: dict[str, Any]) -> None:
    """Body of the subprocess: one ``run_index``, timed, its report written as JSON."""
    import resource

    import torch

    from indexer.ingestion.run import IndexConfig, run_index

    config = IndexConfig(model=spec["model"], checkpoint=spec["checkpoint"], num_workers=spec["workers"],
                         max_patches=spec["max_patches"])
    start = time.perf_counter()
    report = run_index(spec["slides"], spec["out"], config, metadata_csv=spec["metadata"], show_progress=False)
    seconds = time.perf_counter() - start
    if report.failed:
        raise SystemExit(f"slides failed: {report.failed}")
    Path(spec["result"]).write_text(json.dumps({
        "patches": report.patches_encoded, "seconds": seconds, "timings": report.timings, "counts": report.counts,
        "self_rss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "torch_threads": torch.get_num_threads(),
    }))


# -- reports -------------------------------------------------------------------------------
def markdown_report(result: dict[str, Any], command: str = "") -> str:
    """Runs as a Markdown table, then the stage split and the memory verdict."""
    runs = result["runs"]
    stages = _stages(runs)
    threads = f", torch threads {runs[0]['torch_threads']}" if runs else ""
    lines = [f"Machine: {result['cpu']}, {result['cores']} cores{threads}; slides "
             f"{result['config']['slide_px']}² px at {result['config']['mpp']} µm/px, tiled at 20x / 224 px; "
             f"{result['config']['workers']} reader workers.", ""]
    if command:
        lines += [f"Command: `{command}`", ""]
    lines += ["| model | slides | patches | index s | patches/s end-to-end | patches/s embed stage | peak RSS MB |",
              "|---|---|---|---|---|---|---|"]
    for r in runs:
        sampled = f" (≤{r['max_patches']}/slide)" if r["max_patches"] else ""
        embed = f"{r['embed_patches_per_s']:.1f}" if r["embed_patches_per_s"] else ""
        lines.append(f"| {r['model']} | {r['n_slides']} | {r['patches']}{sampled} | {r['index_seconds']:.1f} | "
                     f"{r['patches_per_s']:.1f} | {embed} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Time by stage (s, share of the stage total):", "",
              "| model | slides | " + " | ".join(stages) + " |", "|---" * (len(stages) + 2) + "|"]
    for r in runs:
        total = sum(r["timings"].values()) or 1.0
        lines.append(f"| {r['model']} | {r['n_slides']} | " + " | ".join(
            f"{r['timings'].get(s, 0.0):.2f} ({100 * r['timings'].get(s, 0.0) / total:.0f} %)" for s in stages) + " |")
    mem = result["memory"]
    if mem:
        verdict = "does not grow" if mem["flat"] else "GROWS"
        lines += ["", f"Peak RSS (max over the run's processes), tiny: {mem['peak_rss_mb'][0]:.0f} MB for "
                      f"{mem['slides'][0]} slides vs {mem['peak_rss_mb'][1]:.0f} MB for {mem['slides'][1]} slides "
                      f"({100 * mem['growth']:+.1f} %): peak memory {verdict} with the number of slides "
                      f"(tolerance {100 * mem['tolerance']:.0f} %)."]
    return "\n".join(lines) + "\n"


def write_index_report(result: dict[str, Any], out: str | Path, command: str = "") -> dict[str, Path]:
    """Write ``bench_index.json``, ``.md`` and ``.png`` (time by stage per run) into ``out``."""
    from indexer.store import atomic_write_bytes

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {ext: out / f"bench_index.{ext}" for ext in ("json", "md", "png")}
    atomic_write_bytes(paths["json"], (json.dumps(result | {"command": command}, indent=2) + "\n").encode())
    atomic_write_bytes(paths["md"], markdown_report(result, command).encode())
    plot_stages(result, paths["png"])
    return paths


def plot_stages(result: dict[str, Any], path: str | Path) -> Path:
    """Horizontal stacked bars: seconds per stage for each run, patches/s written at the bar's end."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = result["runs"]
    stages = _stages(runs)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.8 * len(runs)))
    names = [f"{r['model']}\n{r['n_slides']} slides, {r['patches']} patches" for r in runs]
    left = [0.0] * len(runs)
    colours = plt.get_cmap("tab10")
    for j, stage in enumerate(stages):
        widths = [r["timings"].get(stage, 0.0) for r in runs]
        ax.barh(names, widths, left=left, color=colours(j % 10), label=stage)
        left = [a + b for a, b in zip(left, widths)]
    for y, (r, end) in enumerate(zip(runs, left)):
        ax.text(end, y, f"  {r['patches_per_s']:.1f} patches/s end-to-end", va="center", fontsize=8)
    ax.set_xlim(0, max(left, default=1.0) * 1.3)
    ax.set_xlabel("seconds (sum of pipeline stage timings)")
    ax.set_ylabel("run")
    ax.invert_yaxis()
    ax.set_title("Indexing time by stage (each run in a fresh process)", fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), title="stage")
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def _stages(runs: Sequence[dict[str, Any]]) -> list[str]:
    """Stage names in pipeline order of first appearance."""
    return list(dict.fromkeys(s for r in runs for s in r["timings"]))


def main(
    out: Path = typer.Option(..., "--out", help="Folder for bench_index.json, .md and .png."),
    slide_px: int = typer.Option(2048, help="Side of the generated slides in level-0 px."),
    mpp: float = typer.Option(0.5, help="Microns per pixel of the generated slides."),
    slides: str = typer.Option("5,20", help="Slide counts indexed with tiny, comparing peak memory."),
    models: str = typer.Option("tiny,openclip:ViT-B-16", help="Encoders to time (ViT-B-16 with random weights)."),
    vit_slides: int = typer.Option(2, help="Slides indexed with ViT-B-16."),
    vit_max_patches: int = typer.Option(24, help="Patches sampled per slide for ViT-B-16 (slow on CPU)."),
    workers: int = typer.Option(2, help="Patch-reading worker processes per index run."),
    workdir: Optional[Path] = typer.Option(None, help="Keep the generated slides and indexes here (default: a temporary folder)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON instead of the tables."),
) -> None:
    """Indexing speed and memory: patches/s (tiny, ViT-B-16), time by stage, peak RSS for few vs many slides."""
    import tempfile

    from rich.console import Console

    config = IndexBenchConfig(slide_px=slide_px, mpp=mpp, memory_slides=parse_ints(slides, "--slides"), vit_slides=vit_slides,
                              vit_max_patches=vit_max_patches, workers=workers,
                              models=tuple(m.strip() for m in models.split(",") if m.strip()))
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="slidesearch-bench-index-") as tmp:
        with console.status("index benchmark") as status:
            result = run_index_benchmark(config, workdir or Path(tmp), on_step=lambda s: status.update(s))
    command = (f"python -m benchmarks.index --out {out} --slide-px {slide_px} --mpp {mpp:g} --slides {slides} "
               f"--models {models} --vit-slides {vit_slides} --vit-max-patches {vit_max_patches} --workers {workers}")
    paths = write_index_report(result, out, command=command)
    if as_json:
        print_json(result | {"command": command, "files": {ext: str(p) for ext, p in paths.items()}})
        return
    typer.echo(markdown_report(result, command))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


app = typer.Typer(add_completion=False)
app.command()(guarded(main))

if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--child":  # one index run, in a fresh process (``_run_child``)
        _child(json.loads(sys.argv[2]))
    else:
        app()
