"""Ingest at the machine's limit (issue 26): `index --model tiny` patches/s against the work every patch cannot avoid.

Usage: python -m benchmarks.ingest [--big 8] [--small 1000] [--small-memory 100] [--work DIR] [--out DIR]
       [--baseline CODE_DIR] [--baseline-small 100] [--workers N]

Two cohorts of JPEG-tiled pyramidal slides (tifffile + imagecodecs, 256-px YCbCr tiles at quality 80, reduced
levels with ``subfiletype=1``, Aperio descriptions), generated once into ``--work``:

- **big**: 16,384² px at 0.25 µm/px (40x), read at 20x from level 1;
- **small**: 4,096² px at 0.5 µm/px (20x, like TCGA frozen sections), read at level 0; a few distinct slides
  hard-linked under ``--small`` names, so the per-slide cost is measured at 10³ slides without writing 10³ files.

For each cohort, on the same patches the index keeps (``tile_slide`` with the pipeline's tissue mask):

- **read**: one thread, raw OpenSlide ``read_region`` of every patch (in grid order, a fresh handle per slide);
- **encode**: one torch thread, the model's own per-patch transform on the PIL patches plus ``encode_images``
  in batches of 64 (``tiny``, CPU);
- **limit** = cores / (1/read + 1/encode) patches/s (with a GPU encoding: read × cores; not measured here).

Then ``run_index`` with ``--model tiny`` in a fresh process per run (library import excluded); steady patches/s
= patches / (index seconds - model load - reader start), its ratio to the limit, the stage times the pipeline
reports (summed over processes: readers run beside the encoder) and the peak RSS of the run's process tree
(sampled from /proc every 50 ms: the sum over the main process and its readers) and of its largest process.
``--baseline DIR`` runs the same index with the code in DIR (e.g. a ``git archive`` of an older commit) first.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

COHORTS = {  # name → (side px, µm/px, distinct slides written)
    "big": (16384, 0.25, None),
    "small": (4096, 0.5, 16),
}


# -- slides ------------------------------------------------------------------------------------
def write_jpeg_slide(path: Path, side: int, mpp: float, seed: int) -> Path:
    """A JPEG-tiled, Aperio-described pyramidal TIFF of a synthetic cohort layout (``retrieval.demo.synthetic``)."""
    from retrieval.demo.synthetic import DIAGNOSES, SyntheticSlideSpec, cohort_layout, write_slide

    rng = np.random.default_rng(seed)
    diagnosis = list(DIAGNOSES.values())[seed % len(DIAGNOSES)]
    spec = SyntheticSlideSpec(side, side, cohort_layout(side, side, diagnosis.mixture, rng), mpp=mpp, seed=seed,
                              fmt="svs", compression="jpeg")
    return write_slide(path, spec)


def make_cohort(work: Path, name: str, count: int) -> Path:
    """``count`` slides of cohort ``name`` in ``work/name`` (written once, reused)."""
    side, mpp, distinct = COHORTS[name]
    folder = work / f"{name}-{count}"
    folder.mkdir(parents=True, exist_ok=True)
    originals = work / f"{name}-originals"
    originals.mkdir(parents=True, exist_ok=True)
    n_distinct = min(count, distinct or count)
    for i in range(n_distinct):
        src = originals / f"{name}{i:02d}.svs"
        if not src.exists():
            print(f"… writing {src.name} ({side}² px, JPEG)", file=sys.stderr, flush=True)
            write_jpeg_slide(src, side, mpp, seed=1000 * (name == "small") + i)
    for i in range(count):
        dst = folder / f"{name}{i:04d}.svs"
        if not dst.exists():
            os.link(originals / f"{name}{i % n_distinct:02d}.svs", dst)
    return folder


# -- the limit ---------------------------------------------------------------------------------
def grids_of(paths: list[Path]) -> list[tuple[Path, object]]:
    """Each slide's grid as the pipeline makes it (tissue mask, then tiling at 20x / 224 px)."""
    from indexer.ingestion.config import IndexConfig
    from indexer.ingestion.prepare import prepare_slide

    config = IndexConfig(model="tiny")
    return [(p, prepare_slide(p, {"slide_id": p.stem}, config, hash_file=False).grid) for p in paths]


def measure_limit(grids, cores: int) -> dict:
    """Single-threaded raw OpenSlide read rate, per-patch preprocess + encode rate, and the limit."""
    import openslide
    import torch
    from PIL import Image

    from indexer.models.encoders import load_encoder
    from indexer.models.preprocess import BatchPreprocess
    from indexer.ingestion.readers import resolve_workers  # noqa: F401 - the pipeline's default is one reader per core
    from indexer.slides import open_slide
    from indexer.tiles.tiling import read_patch_array

    n = sum(len(g) for _, g in grids)
    t0 = time.perf_counter()
    for path, grid in grids:
        osr = openslide.OpenSlide(str(path))
        for x, y in grid.coords:
            osr.read_region((int(x), int(y)), grid.level, (grid.read_px, grid.read_px))
        osr.close()
    read_s = time.perf_counter() - t0
    patches, t0 = [], time.perf_counter()
    for path, grid in grids:  # the fast path's read (direct tiles where OpenSlide's pixels are kept)
        with open_slide(path) as slide:
            patches += [read_patch_array(slide, grid.level, grid.read_px, grid.patch_px, int(x), int(y))
                        for x, y in grid.coords]
    direct_s = time.perf_counter() - t0
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        encoder = load_encoder("tiny", device="cpu", batch_size=64)
        encoder.encode_images(torch.stack([encoder.preprocess(Image.fromarray(p)) for p in patches[:64]]))  # warm-up
        t0 = time.perf_counter()
        for i in range(0, n, 64):
            encoder.encode_images(torch.stack([encoder.preprocess(Image.fromarray(p)) for p in patches[i:i + 64]]))
        encode_s = time.perf_counter() - t0
        fast = BatchPreprocess(encoder.preprocess, grids[0][1].patch_px, "cpu")
        from indexer.models.preprocess import resize_like_pil

        t0 = time.perf_counter()
        for i in range(0, n, 64):
            chunk = np.stack([resize_like_pil(p, fast.reader_resize) for p in patches[i:i + 64]])
            encoder.encode_images(fast(torch.from_numpy(chunk)))
        fast_encode_s = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    read, encode = n / read_s, n / encode_s
    return {"patches": n, "slides": len(grids), "read_per_s": read, "encode_per_s": encode, "cores": cores,
            "limit_per_s": cores / (1 / read + 1 / encode), "gpu_limit_per_s": read * cores,
            "direct_read_per_s": n / direct_s, "fast_preprocess_encode_per_s": n / fast_encode_s,
            "fast_limit_per_s": cores / (1 / (n / direct_s) + 1 / (n / fast_encode_s))}


# -- index runs --------------------------------------------------------------------------------
def tree_rss_mb(pid: int) -> tuple[float, float, float]:
    """(sum, max, max over the descendants) resident MB of ``pid`` and its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    total, largest, child, todo = 0.0, 0.0, 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            rss = int(Path(f"/proc/{p}/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except OSError:
            continue
        total, largest = total + rss, max(largest, rss)
        child = max(child, rss) if p != pid else child
    return total, largest, child


def run_index_child(folder: Path, out: Path, code: Path | None, workers: int | None) -> dict:
    """One ``run_index`` of ``folder`` (``--model tiny``) in a fresh interpreter, with its RSS sampled: peaks over
    the run (tree, largest process, largest reader) and the main process's peak while it encodes the first and the
    second half of the slides (before the run's commit, which builds the FAISS indexes of all its patches)."""
    result = out.with_suffix(".json")
    spec = {"slides": str(folder), "out": str(out), "result": str(result), "workers": workers}
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    env["PYTHONPATH"] = str(code or ROOT)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, cwd=str(code or ROOT))
    total = len(list(folder.glob("*.svs")))
    peak, halves, stop = [0.0, 0.0, 0.0], [0.0, 0.0], threading.Event()

    def sample() -> None:
        staged, tick = 0, 0
        while not stop.wait(0.05):
            rss = tree_rss_mb(proc.pid)
            peak[:] = [max(a, b) for a, b in zip(peak, rss)]
            if tick % 10 == 0:  # a glob of the staging folder every half second
                staged = len(list((out / "staging").glob("*.npz"))) if not (out / "CURRENT").exists() else -1
            tick += 1
            if 0 <= staged < total:  # all staged: the commit has begun
                halves[staged > total / 2] = max(halves[staged > total / 2], rss[1])

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code_ = proc.wait()
    stop.set()
    sampler.join()
    if code_ != 0:
        raise SystemExit(f"index run failed (exit {code_}): {spec}")
    run = json.loads(result.read_text())
    start_up = run["timings"].get("load model", 0.0) + run["timings"].get("start readers", 0.0)
    run.update(peak_tree_rss_mb=peak[0], peak_process_rss_mb=peak[1], peak_reader_rss_mb=peak[2],
               encoding_rss_mb=halves, steady_s=run["seconds"] - start_up,
               patches_per_s=run["patches"] / (run["seconds"] - start_up))
    return run


# The subprocess (run with the code under test first on sys.path): one `run_index --model tiny`, timed, as JSON.
CHILD = """
import json, sys, time
from pathlib import Path
from indexer.ingestion.config import IndexConfig
from indexer.ingestion.run import run_index
spec = json.loads(sys.argv[1])
kwargs = {} if spec["workers"] is None else {"num_workers": spec["workers"]}
start = time.perf_counter()
report = run_index([spec["slides"]], spec["out"], IndexConfig(model="tiny", **kwargs), show_progress=False)
seconds = time.perf_counter() - start
if report.failed:
    raise SystemExit(f"slides failed: {dict(list(report.failed.items())[:3])}")
Path(spec["result"]).write_text(json.dumps({"patches": report.patches_encoded, "slides": len(report.indexed),
                                            "seconds": seconds, "timings": report.timings}))
"""


# -- report ------------------------------------------------------------------------------------
def markdown(result: dict) -> str:
    lines = [f"Command: `{result['command']}`", f"Commit: {result['commit']}",
             f"Machine: {result['machine']}; load average before/after {result['load']}.", ""]
    lines += ["| cohort | slides | patches | read/s (1 thread, OpenSlide) | preprocess+encode/s (1 thread) | limit/s "
              "| steady patches/s | ratio | peak RSS MB: tree / largest process / largest reader |",
              "|---|---|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        lim = result["limits"][run["cohort"]]
        lines.append(f"| {run['label']} | {run['slides']} | {run['patches']:,} | {lim['read_per_s']:,.0f} | "
                     f"{lim['encode_per_s']:,.0f} | {lim['limit_per_s']:,.0f} | {run['patches_per_s']:,.0f} | "
                     f"**{run['patches_per_s'] / lim['limit_per_s']:.2f}×** | "
                     f"{run['peak_tree_rss_mb']:,.0f} / {run['peak_process_rss_mb']:,.0f} / "
                     f"{run['peak_reader_rss_mb']:,.0f} |")
    lines += ["", "Peak RSS of the encoding process while it encodes the first / second half of the slides (before the "
              "run's commit): " + "; ".join(f"{run['label']}: {run['encoding_rss_mb'][0]:,.0f} / "
                                             f"{run['encoding_rss_mb'][1]:,.0f} MB" for run in result["runs"]
                                             if not run["baseline"]) + "."]
    lines += ["", "Fast path, same patches, one thread: " + "; ".join(
        f"{c}: direct-tile read {v['direct_read_per_s']:,.0f}/s ({v['direct_read_per_s'] / v['read_per_s']:.1f}× "
        f"OpenSlide), Pillow resize + batched preprocess + encode {v['fast_preprocess_encode_per_s']:,.0f}/s, so "
        f"{v['fast_limit_per_s']:,.0f}/s on {v['cores']} cores" for c, v in result["limits"].items()), ""]
    stages = sorted({s for run in result["runs"] for s in run["timings"]}, key=lambda s: -max(
        run["timings"].get(s, 0.0) for run in result["runs"]))
    lines += ["Time by stage (s; reader stages summed over the reader processes):", "",
              "| run | wall s | " + " | ".join(stages) + " |", "|---" * (len(stages) + 2) + "|"]
    for run in result["runs"]:
        lines.append(f"| {run['label']} | {run['seconds']:.1f} | "
                     + " | ".join(f"{run['timings'].get(s, 0.0):.1f}" for s in stages) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--big", type=int, default=8, help="16,384² slides in the big cohort")
    parser.add_argument("--small", type=int, default=1000, help="4,096² slides in the small cohort")
    parser.add_argument("--small-memory", type=int, default=100, help="also index this many small slides (peak RSS)")
    parser.add_argument("--limit-small", type=int, default=16, help="small slides whose patches measure the limit")
    parser.add_argument("--workers", type=int, default=None, help="reader processes (default: the pipeline's)")
    parser.add_argument("--baseline", type=Path, default=None, help="a checkout of older code to index with first")
    parser.add_argument("--baseline-small", type=int, default=100, help="small slides indexed by the baseline")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "slidesearch-bench-ingest")
    parser.add_argument("--out", type=Path, default=Path("out/bench-ingest"))
    args = parser.parse_args(argv)
    from benchmarks.common import machine_description

    load0 = os.getloadavg()[0]
    cores = len(os.sched_getaffinity(0))
    big, small = make_cohort(args.work, "big", args.big), make_cohort(args.work, "small", args.small)
    small_memory = make_cohort(args.work, "small", args.small_memory)
    limits = {"big": measure_limit(grids_of(sorted(big.glob("*.svs"))[: min(args.big, 4)]), cores),
              "small": measure_limit(grids_of(sorted(args.work.glob("small-originals/*.svs"))[: args.limit_small]),
                                     cores)}
    runs = []
    with tempfile.TemporaryDirectory(prefix="slidesearch-bench-ingest-") as tmp:
        plan = [("big", big, None), ("small", small_memory, None), ("small", small, None)]
        if args.baseline is not None:
            plan = [("big", big, args.baseline), ("small", make_cohort(args.work, "small", args.baseline_small),
                                                   args.baseline)] + plan
        for i, (cohort, folder, code) in enumerate(plan):
            label = f"{cohort}{' (baseline)' if code else ''}, {folder.name.split('-')[1]} slides"
            print(f"… indexing {label}", file=sys.stderr, flush=True)
            run = run_index_child(folder, Path(tmp) / f"index-{i}", code, None if code else args.workers)
            runs.append(run | {"cohort": cohort, "label": label, "baseline": code is not None})
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    result = {"command": "python -m benchmarks.ingest " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
              "commit": commit.strip(), "machine": machine_description(),
              "load": f"{load0:.1f} / {os.getloadavg()[0]:.1f}", "limits": limits, "runs": runs}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_ingest.json").write_text(json.dumps(result, indent=2) + "\n")
    (args.out / "bench_ingest.md").write_text(markdown(result))
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
