"""The Ray engine (issue 15): throughput with 1 and 2 encoder actors, overhead against the local engine on the same
slides, the driver's commit cost at model-sized vectors, and a cluster plan for 10⁵ slides on 8 GPUs from them.

Usage: python -m benchmarks.ray_engine [--slides 12] [--slide-px 2048] [--mpp 0.5] [--repeats 3] [--warmup 1]
       [--commit-slides 20] [--commit-patches 5000] [--out out/bench-ray]

One process starts one local Ray cluster (2 CPUs) and indexes the same synthetic cohort (``tiny``, 20x / 224 px,
``--workers 0``, one torch thread) with the local engine, the Ray engine with 1 actor and with 2 actors, interleaved per round, each
into a fresh index, after an untimed warm-up round; ratios are taken within a round, then the median over rounds. "steady" excludes the model load
(the local process's, or the actors' start), which a long run pays once. The commit cost is measured by staging
``--commit-slides`` synthetic slides of ``--commit-patches`` 512-d features (K = 16) and timing the driver's
``commit_slides`` on them (read staging, aggregate, write the segment, build its FAISS indexes).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.incremental import record, synthetic_features

MODES = {"local": {}, "ray, 1 actor": {"engine": "ray", "actors": 1}, "ray, 2 actors": {"engine": "ray", "actors": 2}}
READ_STAGES = ("hash", "open", "tissue", "stain", "tile", "read")  # the readers' stages (issue 26), then the encoder's
ENCODE_STAGES = ("preprocess", "embed", "stage")

# The plan's figures that are not measured by this script (see RESULTS.md): (value, where it comes from).
PLAN_ASSUMED = {
    "patches_per_slide": (10_000, "assumed: a typical resection WSI at 20x / 224 px after tissue detection"),
    "gpu_patches_per_s": (1_500, "assumed: a ViT-B/16-class encoder in bf16 on one data-centre GPU; no GPU was "
                                 "lent to this project, so no GPU figure is measured"),
    "read_patches_per_core_s": (3_168, "measured, RESULTS.md issue #26: one core reads 20x patches from level 1 of "
                                       "JPEG-tiled 16k² slides straight from their tiles, quiet machine"),
    "prepare_s_per_slide": (0.15, "measured, RESULTS.md issue #26: hash, open, tissue, stain and tiling of a 16k² "
                                  "slide (65 MB; hashing grows with the file, ~1.5 GB/s)"),
    "reader_cores_per_gpu": (4, "assumed: --workers 4 reader processes per GPU actor"),
}


def index_once(slides: Path, out: Path, mode: dict) -> dict:
    """One `run_index` of the cohort into a fresh ``out``: wall, load, steady seconds and time by stage."""
    from indexer.ingestion.config import IndexConfig
    from indexer.ingestion.run import run_index

    import torch

    config = dataclasses.replace(IndexConfig(model="tiny", num_workers=0, device="cpu"), **mode)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the local engine on one core, as a 1-CPU actor (Ray gives it OMP_NUM_THREADS=1)
    try:
        t0 = time.perf_counter()
        report = run_index([slides], out, config, show_progress=False)
        wall = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads)
    assert not report.failed, report.failed
    n = len(report.indexed)
    load = report.timings.get("load model", 0.0)
    return {"wall_s": wall, "load_s": load, "steady_s": wall - load, "slides": n, "patches": report.patches_encoded,
            "slides_per_s": n / (wall - load), "timings": report.timings}


def measure_commit(work: Path, n_slides: int, patches: int, dim: int = 512, k: int = 16) -> dict:
    """Stage ``n_slides`` synthetic slides of ``patches`` ``dim``-d features and time the driver's commit of them."""
    import pyarrow as pa

    from indexer.store.identity import IndexSettings
    from indexer.store.staging import StagedSlide
    from indexer.store.writer import IndexWriter

    rng = np.random.default_rng(0)
    prototypes = rng.standard_normal((k, dim)).astype(np.float32)
    prototypes /= np.linalg.norm(prototypes, axis=1, keepdims=True)
    settings = IndexSettings(encoder={"name": "synthetic", "weights_sha256": "0" * 64, "dim": dim},
                             bank={"name": "synthetic", "K": k, "sha256": "synthetic", "source": "synthetic"})
    coords = np.stack([np.arange(patches) % 100 * 448, np.arange(patches) // 100 * 448], axis=1)
    ids = [f"C{i:05d}" for i in range(n_slides)]
    with IndexWriter(work / "commit", create=True) as writer:
        writer.set_identity(settings)
        t0 = time.perf_counter()
        for slide_id in ids:
            rec = {**record(slide_id, patches), "fingerprint": settings.fingerprint(None), "mpp_override": None}
            writer.staging.put(StagedSlide(rec, coords, synthetic_features(slide_id, patches, prototypes), 448))
        stage = time.perf_counter() - t0
        names = [f"p{i}" for i in range(k)]
        table = pa.table({"proto_id": pa.array(range(k), pa.int32()), "name": names, "descriptions": [[s] for s in names]})
        fixed = writer.fix_prototypes(table, prototypes)
        timings: dict[str, float] = {}
        t0 = time.perf_counter()
        version = writer.commit_slides(ids, [], [], fixed, timings)
        commit = time.perf_counter() - t0
    return {"slides": n_slides, "patches_per_slide": patches, "dim": dim, "K": k, "commit_s": commit,
            "stage_s_per_slide": stage / n_slides, "commit_s_per_slide": commit / n_slides,
            "commit_s_per_patch": commit / (n_slides * patches),
            "stages": {s: version.timings.get(s, 0.0) for s in ("aggregate", "tables", "faiss")},
            "faiss": {name: e.get("factory") for name, e in version.segments[-1].get("faiss", {}).items()}}


def cluster_plan(measured: dict, commit: dict, n_slides: int = 100_000, gpus: int = 8) -> dict:
    """Where the time of ``n_slides`` on ``gpus`` GPU actors goes, from per-slide costs (measured or assumed)."""
    a = {k: v for k, (v, _) in PLAN_ASSUMED.items()}
    p = a["patches_per_slide"]
    encode = p / a["gpu_patches_per_s"]  # s per slide on one GPU
    read = p / (a["read_patches_per_core_s"] * a["reader_cores_per_gpu"])  # s per slide, overlapped with encoding
    # The readers prepare the next slide (tissue, stain, tiling) while the GPU encodes this one (issue 26).
    prepare = a["prepare_s_per_slide"] / a["reader_cores_per_gpu"]
    commit = commit["commit_s_per_patch"] * p  # driver s per slide, at 512-d
    per_slide_actor = max(encode, read + prepare) + max(0.0, measured["overhead_s_per_slide"])
    actors_wall = n_slides * per_slide_actor / gpus
    driver = n_slides * commit
    return {"slides": n_slides, "gpus": gpus, "encode_s_per_slide": encode, "read_s_per_slide": read,
            "prepare_s_per_slide": prepare, "commit_s_per_slide": commit,
            "overhead_s_per_slide": measured["overhead_s_per_slide"],
            "actor_s_per_slide": per_slide_actor,
            # The driver keeps every GPU busy while one slide's commit costs at most this per patch.
            "commit_budget_s_per_patch": per_slide_actor / gpus / p, "wall_h": max(actors_wall, driver) / 3600,
            "actors_h": actors_wall / 3600, "driver_busy_h": driver / 3600,
            "driver_busy_share": driver / max(actors_wall, driver),
            "bound": "GPU encoding" if encode >= read + prepare else "patch reading"}


def run(args, work: Path) -> dict:
    import ray

    from retrieval.demo.synthetic import write_cohort

    write_cohort(work / "slides", n_patients=(args.slides + 1) // 2, slides_per_patient=2,
                 size=(args.slide_px, args.slide_px), mpp=args.mpp)
    (work / "slides" / "metadata.csv").unlink()
    t0 = time.perf_counter()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error")
    ray_start = time.perf_counter() - t0
    rounds = []
    try:
        for r in range(args.warmup + args.repeats):  # warm-up rounds fill caches and import lazily, untimed
            timed = {name: index_once(work / "slides", work / f"idx-{r}-{i}", mode)
                     for i, (name, mode) in enumerate(MODES.items())}
            print(f"… round {r + 1}{' (warm-up)' if r < args.warmup else ''}: "
                  + ", ".join(f"{k} {v['steady_s']:.1f}s" for k, v in timed.items()), file=sys.stderr, flush=True)
            if r >= args.warmup:
                rounds.append(timed)
    finally:
        ray.shutdown()
    commit = measure_commit(work, args.commit_slides, args.commit_patches)
    med = statistics.median
    summary = summarise(rounds)
    ratios = {
        "2 actors / 1 actor (steady slides/s)": med([rd["ray, 2 actors"]["slides_per_s"] / rd["ray, 1 actor"]["slides_per_s"]
                                                     for rd in rounds]),
        "ray 1 actor / local (steady slides/s)": med([rd["ray, 1 actor"]["slides_per_s"] / rd["local"]["slides_per_s"]
                                                      for rd in rounds]),
        "ray 1 actor / local (wall)": med([rd["ray, 1 actor"]["wall_s"] / rd["local"]["wall_s"] for rd in rounds]),
    }
    two = rounds[-1]["ray, 2 actors"]
    n = two["slides"]
    per_slide = {s: two["timings"].get(s, 0.0) / n for s in (*READ_STAGES, *ENCODE_STAGES, "commit")}
    # The engine's own cost per slide: the steady time 1 actor takes beyond what the local engine takes.
    overhead = med([(rd["ray, 1 actor"]["steady_s"] - rd["local"]["steady_s"]) / n for rd in rounds])
    measured = {"per_slide_s": per_slide, "patches_per_slide": two["patches"] / n, "overhead_s_per_slide": overhead}
    return {"rounds": rounds, "summary": summary, "ratios": ratios, "ray_start_s": ray_start, "measured": measured,
            "commit": commit, "plan": cluster_plan(measured, commit)}


def summarise(rounds: list[dict]) -> dict:
    """Medians over rounds per engine, with ``busy`` (encoding processes at work on average: their summed
    per-slide work over the steady wall) and ``work_s_per_slide`` (one slide's work in its process)."""
    work = lambda run: sum(run["timings"].get(s, 0.0) for s in (*READ_STAGES, *ENCODE_STAGES))  # noqa: E731
    out = {}
    for name in rounds[0]:
        runs = [rd[name] for rd in rounds]
        out[name] = {k: statistics.median([r[k] for r in runs]) for k in ("wall_s", "load_s", "steady_s", "slides_per_s")}
        out[name]["busy"] = statistics.median([work(r) / r["steady_s"] for r in runs])
        out[name]["work_s_per_slide"] = statistics.median([work(r) / r["slides"] for r in runs])
    return out


def markdown(result: dict) -> str:
    s, m, c, p = result["summary"], result["measured"], result["commit"], result["plan"]
    lines = [f"Command: `{result['command']}`", f"Machine: {result['machine']}; load average {result['load']}.", "",
             "| engine | wall s | model load s | steady s | steady slides/s | busy encoders | work s per slide |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {k} | {v['wall_s']:.1f} | {v['load_s']:.1f} | {v['steady_s']:.1f} | {v['slides_per_s']:.2f} | "
              f"{v['busy']:.2f} | {v['work_s_per_slide']:.2f} |" for k, v in s.items()]
    lines += ["", *(f"- {k}: **{v:.2f}×**" for k, v in result["ratios"].items()),
              f"- starting the local Ray cluster (`ray.init(num_cpus=2)`): {result['ray_start_s']:.1f} s, once per run",
              "", f"Per slide, measured here ({m['patches_per_slide']:.0f} patches, tiny, CPU actors): "
              + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in m["per_slide_s"].items())
              + f"; Ray engine overhead (steady, 1 actor minus local) {m['overhead_s_per_slide'] * 1000:.0f} ms.",
              f"Commit at model size, measured here: {c['slides']} slides × {c['patches_per_slide']:,} patches × "
              f"{c['dim']}-d (K = {c['K']}) committed in {c['commit_s']:.1f} s = {c['commit_s_per_patch'] * 1e6:.1f} µs "
              f"per patch (aggregate {c['stages']['aggregate']:.1f} s, tables {c['stages']['tables']:.1f} s, FAISS "
              f"{c['stages']['faiss']:.1f} s; FAISS kinds {c['faiss']}); staging a slide (worker side) {c['stage_s_per_slide']:.2f} s.", "",
              f"Cluster plan, {p['slides']:,} slides on {p['gpus']} GPUs:", "",
              "| per slide | seconds | source |", "|---|---|---|",
              f"| encode ({PLAN_ASSUMED['patches_per_slide'][0]:,} patches) | {p['encode_s_per_slide']:.2f} | "
              f"{PLAN_ASSUMED['gpu_patches_per_s'][1]} ({PLAN_ASSUMED['gpu_patches_per_s'][0]:,} patches/s) |",
              f"| read patches (overlaps encoding) | {p['read_s_per_slide']:.2f} | "
              f"{PLAN_ASSUMED['read_patches_per_core_s'][1]}; {PLAN_ASSUMED['reader_cores_per_gpu'][1]} |",
              f"| preparing the slide (readers, overlaps encoding) | {p['prepare_s_per_slide']:.2f} | "
              f"{PLAN_ASSUMED['prepare_s_per_slide'][1]}, over the readers |",
              f"| commit on the driver | {p['commit_s_per_slide']:.2f} | measured here (above), 512-d |",
              f"| Ray engine overhead | {p['overhead_s_per_slide']:.3f} | measured here (above), 2 shared cores |", "",
              f"Actors: {p['actor_s_per_slide']:.2f} s per slide ({p['bound']}-bound) → {p['actors_h']:.1f} h on "
              f"{p['gpus']} GPUs; the driver is busy {p['driver_busy_h']:.1f} h of it "
              f"({p['driver_busy_share'] * 100:.0f} %), so the run takes ≈ **{p['wall_h']:.1f} h**. The driver keeps "
              f"the {p['gpus']} GPUs busy while a commit costs at most {p['commit_budget_s_per_patch'] * 1e6:.0f} µs per "
              f"patch; it costs {c['commit_s_per_patch'] * 1e6:.0f} µs here."]
    return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.2))
    names = list(result["summary"])
    ax.bar(names, [result["summary"][n]["slides_per_s"] for n in names], color=["#777", "#4a7", "#27a"])
    ax.set_ylabel("steady slides/s (median)")
    ax.set_title("tiny, 2-core machine")
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> dict:
    import os

    from benchmarks.common import machine_description

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slides", type=int, default=12, help="synthetic slides in the cohort")
    parser.add_argument("--slide-px", type=int, default=2048, help="side of the generated slides in level-0 px")
    parser.add_argument("--mpp", type=float, default=0.5, help="microns per pixel of the generated slides")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds of (local, 1 actor, 2 actors)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first")
    parser.add_argument("--commit-slides", type=int, default=20, help="slides in the measured model-sized commit")
    parser.add_argument("--commit-patches", type=int, default=5000, help="patches per slide in that commit")
    parser.add_argument("--out", type=Path, default=Path("out/bench-ray"), help="folder for the JSON, Markdown and PNG")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slidesearch-bench-ray-") as tmp:
        result = run(args, Path(tmp))
    result.update(command="python -m benchmarks.ray_engine " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:])),
                  machine=machine_description(), load=" / ".join(f"{x:.1f}" for x in os.getloadavg()))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "bench_ray.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
    (args.out / "bench_ray.md").write_text(markdown(result))
    plot(result, args.out / "bench_ray.png")
    print(markdown(result))
    return result


if __name__ == "__main__":
    main()
