"""The GPU check: one command that measures encoding, FAISS and `index` on a CUDA GPU, and fails loudly if any
step ran on the CPU.

Usage: python -m benchmarks.gpu [--out out/gpu] [--quick] [--batch-sizes 64,128,256,512] [--precisions fp16,bf16]
       [--encode-patches 2048] [--faiss-sizes 100000,1000000] [--faiss-dim 512] [--queries 1000]
       [--slides 8] [--slide-px 4096] [--workers 4]

1. Encoding: ViT-B/16 (224 px) and a CONCH-sized model (CONCH's image tower is a ViT-B/16 at 448 px: 784 tokens a
   patch, 4× ViT-B/16's), open_clip with random weights, through the project's ``Encoder.encode_images`` in each
   precision (autocast) and batch size: patches/s (CUDA-synchronised) and peak GPU memory.
2. FAISS: Flat and IVF-PQ (the project's default parameters) trained, filled and searched on the GPU through
   ``indexer.vectors``, and the same on the CPU: build s, QPS of 1,000 batched queries, recall@10 against
   exact search; GPU recall must match the CPU's within ``PARITY``.
3. ``index`` end to end: a synthetic cohort indexed by ``run_index`` with ViT-B/16 (random weights, bf16, CUDA):
   its patches/s against step 1's encoder-only rate at the same batch size, and the devices the run reports.
4. Every step's evidence (encoder on CUDA with its weights there and GPU memory used; FAISS indexes that are GPU
   indexes; the run reporting CUDA and the GPU) is checked: a step that ran on the CPU fails the command (exit 1).

Without a CUDA GPU that torch and FAISS can both use it refuses in one line (exit 2). Writes bench_gpu.json and
bench_gpu.md into ``--out``; ``benchmarks/aggregate.py`` and ``benchmarks/encode.py`` take the JSON
(``--gpu-report``) to judge their targets at the measured rate.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

from benchmarks.common import header, provenance, write_outputs

MODELS = {"ViT-B/16": ("ViT-B-16", 224), "CONCH-sized (ViT-B/16 at 448 px)": ("ViT-B-16", 448)}
PARITY = 0.03  # |recall@10 on the GPU − on the CPU| allowed (k-means on another device finds other centroids)
QUICK = {"batch_sizes": "64,256", "precisions": "bf16", "encode_patches": 512, "faiss_sizes": "100000",
         "slides": 2, "slide_px": 2048}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Options (``--quick``: one precision, two batch sizes, 10^5 vectors, two slides)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("out/gpu"), help="folder for bench_gpu.json and .md")
    parser.add_argument("--quick", action="store_true", help="reduced sizes (a few minutes)")
    parser.add_argument("--batch-sizes", default="64,128,256,512", help="encoder batch sizes")
    parser.add_argument("--precisions", default="fp16,bf16", help="autocast precisions (fp16, bf16, fp32)")
    parser.add_argument("--encode-patches", type=int, default=2048, help="patches encoded per configuration")
    parser.add_argument("--faiss-sizes", default="100000,1000000", help="vectors per FAISS index")
    parser.add_argument("--faiss-dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000, help="held-out queries (one batch) per FAISS index")
    parser.add_argument("--slides", type=int, default=8, help="synthetic slides indexed end to end")
    parser.add_argument("--slide-px", type=int, default=4096, help="their side in level-0 px (0.5 µm/px)")
    parser.add_argument("--workers", type=int, default=4, help="patch-reading workers of the `index` run")
    args = parser.parse_args(argv)
    if args.quick:
        defaults = parser.parse_args([])
        for key, value in QUICK.items():
            if getattr(args, key) == getattr(defaults, key):
                setattr(args, key, value)
    args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b]
    args.precisions = [p for p in str(args.precisions).split(",") if p]
    args.faiss_sizes = [int(float(n)) for n in str(args.faiss_sizes).split(",") if n]
    return args


def cuda_problem(probe=None, faiss_gpus: int | None = None) -> str | None:
    """Why this machine cannot run the check (None when torch and FAISS both see a GPU)."""
    from indexer.models.devices import probe_torch

    probe = probe or probe_torch()
    if not probe.available:
        return f"torch cannot use a CUDA GPU ({probe.error or 'none visible'})"
    if faiss_gpus is None:
        import faiss

        faiss_gpus = faiss.get_num_gpus()
    if faiss_gpus < 1:
        return "FAISS sees no GPU (install the faiss-gpu wheel that matches this CUDA driver)"
    return None


def model_config(arch: str, image_size: int) -> dict:
    """open_clip's config of ``arch`` with its image tower at ``image_size`` px."""
    import open_clip

    config = json.loads(json.dumps(open_clip.get_model_config(arch)))
    config["vision_cfg"]["image_size"] = image_size
    return config


def encode_step(models: dict, precisions: list[str], batch_sizes: list[int], patches: int, device: str) -> list[dict]:
    """patches/s and peak GPU memory of ``encode_images`` per model × precision × batch size, with evidence."""
    import torch

    from indexer.models.openclip import build_open_clip

    rows = []
    for name, (arch, size) in models.items():
        config = model_config(arch, size) if isinstance(arch, str) else {  # a config dict (tests: tiny's)
            **arch, "vision_cfg": {**arch["vision_cfg"], "image_size": size}}
        encoder = build_open_clip(name, config, f"{name} ({size} px)", weights=None, tag=None, device=device,
                                  batch_size=max(batch_sizes))
        pixels = torch.randn(patches, 3, size, size)
        for precision in precisions:
            encoder.precision = precision
            for batch in batch_sizes:
                encoder.batch_size = batch
                encoder.encode_images(pixels[:batch])  # warm-up (kernels, cuDNN choices)
                _sync(device)
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                times = []
                for _ in range(2):
                    start = time.perf_counter()
                    encoder.encode_images(pixels)
                    _sync(device)
                    times.append(time.perf_counter() - start)
                rows.append({"model": name, "image_size": size, "precision": precision, "batch_size": batch,
                             "patches": patches, "patches_per_s": patches / statistics.median(times),
                             "peak_gpu_mb": _peak_mb(device), "evidence": {
                                 "device": encoder.device,
                                 "weights_on": next(encoder.model.parameters()).device.type}})
        del encoder
    return rows


def faiss_step(sizes: list[int], dim: int, n_queries: int) -> list[dict]:
    """Flat and IVF-PQ per size, on the GPU and on the CPU: build s, QPS, recall@10, and whether it was a GPU index."""
    import faiss

    from indexer import vectors as vi
    from indexer.vectors.device import is_gpu
    from benchmarks.search_faiss import synthetic_embeddings

    rows = []
    for n in sizes:
        data = synthetic_embeddings(n + n_queries, dim, 256, seed=0)
        base, queries, ids = data[:n], data[n:], np.arange(n, dtype=np.int64)
        truth = faiss.knn(queries, base, 10, metric=faiss.METRIC_INNER_PRODUCT)[1]
        for kind in ("flat", "ivf_pq"):
            choice = vi.choice_for_kind(kind, n, dim)
            for device in ("gpu", "cpu"):
                start = time.perf_counter()
                index = vi.build_index(base, ids, choice, use_gpu=device == "gpu")
                searched = (vi.to_gpu(index) or index) if device == "gpu" else index
                build_s = time.perf_counter() - start
                vi.search(searched, queries[:10], 10)  # warm-up
                start = time.perf_counter()
                found = vi.search(searched, queries, 10)[1]
                qps = len(queries) / (time.perf_counter() - start)
                recall = float(np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, truth)]))
                rows.append({"n": n, "dim": dim, "kind": kind, "factory": choice.describe(), "device": device,
                             "build_s": build_s, "qps": qps, "recall_at_10": recall,
                             "evidence": {"gpu_index": bool(is_gpu(searched))}})
    return rows


def index_step(model: str, checkpoint: str | None, device: str, slides: int, slide_px: int, workers: int,
               batch_size: int, work: Path) -> dict:
    """``run_index`` over a synthetic cohort: patches/s of the run (model load excluded) and its devices."""
    from indexer.ingestion.config import IndexConfig
    from indexer.ingestion.run import run_index
    from retrieval.demo.synthetic import write_cohort

    cohort = work / "cohort"
    write_cohort(cohort, n_patients=max(1, slides // 2), slides_per_patient=min(2, slides), size=(slide_px, slide_px),
                 mpp=0.5)
    config = IndexConfig(model=model, checkpoint=checkpoint, device=device, batch_size=batch_size,
                         num_workers=workers)
    start = time.perf_counter()
    report = run_index([cohort], work / "index", config, show_progress=False)
    wall = time.perf_counter() - start - report.timings.get("load model", 0.0)
    if report.failed:
        raise RuntimeError(f"index step: slides failed: {report.failed}")
    patches = report.patches_encoded
    return {"model": model, "slides": slides, "patches": patches, "batch_size": batch_size, "workers": workers,
            "patches_per_s": patches / wall, "embed_patches_per_s": patches / max(report.timings.get("embed", 0), 1e-9),
            "timings": {k: round(v, 2) for k, v in report.timings.items()}, "devices": report.devices}


def ran_on_cpu(result: dict) -> list[str]:
    """Every step whose evidence shows the CPU, and every GPU/CPU recall mismatch beyond ``PARITY``."""
    problems = []
    for row in result.get("encode", []):
        e = row["evidence"]
        if not e["device"].startswith("cuda") or e["weights_on"] != "cuda" or not row["peak_gpu_mb"]:
            problems.append(f"encode {row['model']} {row['precision']} batch {row['batch_size']}: ran on "
                            f"{e['device']} (weights on {e['weights_on']}, {row['peak_gpu_mb']:.0f} MB of GPU memory)")
    cpu_recall = {(r["n"], r["kind"]): r["recall_at_10"] for r in result.get("faiss", []) if r["device"] == "cpu"}
    for row in result.get("faiss", []):
        if row["device"] != "gpu":
            continue
        if not row["evidence"]["gpu_index"]:
            problems.append(f"FAISS {row['factory']} at {row['n']:,}: searched on the CPU, not the GPU")
        reference = cpu_recall.get((row["n"], row["kind"]))
        if reference is not None and abs(row["recall_at_10"] - reference) > PARITY:
            problems.append(f"FAISS {row['factory']} at {row['n']:,}: recall@10 {row['recall_at_10']:.3f} on the "
                            f"GPU against {reference:.3f} on the CPU (parity ±{PARITY})")
    run = result.get("index")
    if run:
        devices = run["devices"]
        if not devices.get("encoder", "").startswith("cuda") or not devices.get("faiss", "").startswith("gpu"):
            problems.append(f"index: the run reports encoder {devices.get('encoder')!r} and FAISS "
                            f"{devices.get('faiss')!r}, not the GPU")
    return problems


def markdown(result: dict) -> str:
    """The three tables and the verdict."""
    lines = [header(result["provenance"]), "", f"GPU: {result.get('gpu', 'unknown')}.", "",
             "| model | precision | batch | patches/s | peak GPU MB |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['precision']} | {r['batch_size']} | {r['patches_per_s']:,.0f} | "
              f"{r['peak_gpu_mb']:,.0f} |" for r in result.get("encode", [])]
    lines += ["", "| N × d | index | device | build s | QPS (1,000 queries) | recall@10 |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['n']:,} × {r['dim']} | `{r['factory']}` | {r['device']} | {r['build_s']:.1f} | {r['qps']:,.0f} | "
              f"{r['recall_at_10']:.3f} |" for r in result.get("faiss", [])]
    run = result.get("index")
    if run:
        ratio = run.get("ratio_to_encoder_only")
        versus = (f" = **{ratio:.2f}×** the encoder-only rate (ViT-B/16, bf16, same batch; target ≥ 0.8)" if ratio
                  else " (no encoder-only bf16 rate at this batch size to compare with)")
        lines += ["", f"`index` end to end: {run['slides']} slides, {run['patches']:,} patches, {run['model']} "
                  f"(batch {run['batch_size']}, {run['workers']} readers; model load excluded): "
                  f"**{run['patches_per_s']:,.0f} patches/s** (embed stage {run['embed_patches_per_s']:,.0f}){versus}; "
                  f"devices: encoder {run['devices'].get('encoder')}, FAISS {run['devices'].get('faiss')}."]
    problems = result.get("problems", [])
    lines += ["", "**Every step ran on the GPU.**" if not problems else
              "**FAILED: steps ran on the CPU or lost recall:**\n" + "\n".join(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out: Path) -> None:
    """Print the report and write bench_gpu.json and bench_gpu.md into ``out``."""
    write_outputs(out, "gpu", result, markdown(result))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    problem = cuda_problem()
    if problem:
        print(f"error: benchmarks/gpu.py needs a CUDA GPU: {problem}", file=sys.stderr)
        return 2
    import torch

    result = {"provenance": provenance("benchmarks/gpu.py", argv), "gpu": torch.cuda.get_device_name(0)}
    result["encode"] = encode_step(MODELS, args.precisions, args.batch_sizes, args.encode_patches, "cuda")
    result["faiss"] = faiss_step(args.faiss_sizes, args.faiss_dim, args.queries)
    batch = max(args.batch_sizes)
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as work:
        run = index_step("openclip:ViT-B-16", "random", "cuda", args.slides, args.slide_px, args.workers, batch,
                         Path(work))
    encoder_only = next((r["patches_per_s"] for r in result["encode"] if r["model"] == "ViT-B/16"
                         and r["precision"] == "bf16" and r["batch_size"] == batch), None)
    run["ratio_to_encoder_only"] = run["patches_per_s"] / encoder_only if encoder_only else None
    result["index"] = run
    result["problems"] = ran_on_cpu(result)
    write_report(result, args.out)
    for line in result["problems"]:
        print(f"error: {line}", file=sys.stderr)
    return 1 if result["problems"] else 0


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _peak_mb(device: str) -> float:
    if not device.startswith("cuda"):
        return 0.0
    import torch

    return torch.cuda.max_memory_allocated() / 2**20


if __name__ == "__main__":
    sys.exit(main())
