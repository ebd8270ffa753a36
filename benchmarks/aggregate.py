"""Aggregation cost vs. patch encoding: ProAlign pooling of 100,000 patches against ViT-B/16 throughput.

Run: python -m benchmarks.aggregate [--patches 100000] [--repeats 5] [--encoder-batches 3]
     [--gpu-report out/gpu/bench_gpu.json] [--out DIR]
Reports the median aggregation time for K = 16 and K = 32 (d = 512, float16 features), the peak extra
memory of aggregation at 200,000 patches, and aggregation as a share of encoding the same patches at two
encoder rates: the GPU rate the target is judged at (measured by benchmarks/gpu.py when ``--gpu-report`` is
given, else the assumed 1,500 patches/s of benchmarks/common.py) and, for comparison only, ViT-B/16 (random
weights, batches of 32×3×224×224) measured on this machine's CPU, whose slowness would make any cost look small.
"""

from __future__ import annotations

import argparse
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from benchmarks.common import gpu_encoder_rate, header, provenance, write_outputs
from indexer.aggregation.aggregate import AggregationConfig, aggregate_slide, l2_normalize

DIM = 512
TARGET_FRACTION = 0.01


def random_unit(n: int, d: int, seed: int, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.empty((n, d), dtype=dtype)
    for start in range(0, n, 50_000):  # build in slices to keep the float32 temporary small
        out[start:start + 50_000] = l2_normalize(rng.standard_normal((min(50_000, n - start), d), np.float32))
    return out


def time_aggregation(X: np.ndarray, k: int, repeats: int, config: AggregationConfig) -> list[float]:
    P = random_unit(k, X.shape[1], seed=k)
    aggregate_slide(X[:1000], P, config)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        aggregate_slide(X, P, config)
        times.append(time.perf_counter() - t0)
    return times


def peak_memory_mb(n: int, k: int, config: AggregationConfig) -> float:
    """Peak bytes NumPy allocates inside aggregate_slide (inputs excluded), in MB."""
    X, P = random_unit(n, DIM, seed=1, dtype=np.float16), random_unit(k, DIM, seed=2)
    tracemalloc.start()
    aggregate_slide(X, P, config)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2**20


def encoder_images_per_second(batches: int, batch_size: int = 32) -> float:
    import open_clip
    import torch

    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    images = torch.randn(batch_size, 3, 224, 224)
    with torch.inference_mode():
        model.encode_image(images)  # warm-up
        times = []
        for _ in range(batches):
            t0 = time.perf_counter()
            model.encode_image(images)
            times.append(time.perf_counter() - t0)
    return batch_size / statistics.median(times)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000, help="patches per slide")
    parser.add_argument("--repeats", type=int, default=5, help="timed aggregation runs per K")
    parser.add_argument("--encoder-batches", type=int, default=3,
                        help="timed ViT-B/16 batches of 32 on the CPU, for comparison (0: skip)")
    parser.add_argument("--gpu-report", type=Path, default=None, help="benchmarks/gpu.py's JSON: its measured rate")
    parser.add_argument("--out", type=Path, default=None, help="write bench_aggregate.json and .md here")
    args = parser.parse_args(argv)
    facts = provenance("benchmarks/aggregate.py", argv)
    gpu_rate, gpu_source = gpu_encoder_rate(args.gpu_report)

    config = AggregationConfig()
    X = random_unit(args.patches, DIM, seed=0, dtype=np.float16)
    rows = {}
    for k in (16, 32):
        times = time_aggregation(X, k, args.repeats, config)
        rows[k] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    del X
    peak = peak_memory_mb(200_000, 32, config)
    cpu_rate = encoder_images_per_second(args.encoder_batches) if args.encoder_batches else None
    for row in rows.values():
        row["share_at_gpu_rate"] = row["median_s"] / (args.patches / gpu_rate)
        row["share_at_cpu_rate"] = row["median_s"] / (args.patches / cpu_rate) if cpu_rate else None
    result = {"provenance": facts, "patches": args.patches, "dim": DIM, "chunk": config.chunk, "tau": config.tau,
              "aggregation": {str(k): v for k, v in rows.items()}, "gpu_rate": gpu_rate, "gpu_rate_source": gpu_source,
              "cpu_vit_b16_rate": cpu_rate, "peak_memory_mb_200k_k32": peak}
    write_outputs(args.out, "aggregate", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    """The table: aggregation time per K and its share of encoding at the GPU rate (the target) and the CPU rate."""
    n, rate, cpu = result["patches"], result["gpu_rate"], result["cpu_vit_b16_rate"]
    on_cpu = (f" and {n / cpu:,.0f} s at the {cpu:.1f} patches/s that ViT-B/16 (random weights, batch 32) runs at "
              "on this machine's CPU" if cpu else " (the CPU's ViT-B/16 rate was not measured: --encoder-batches 0)")
    lines = [header(result["provenance"]), "",
             f"Aggregation (`aggregate_slide`, NumPy, tau {result['tau']}, chunk {result['chunk']}) of {n:,} patches "
             f"× {result['dim']}-d float16; encoding the same patches takes {n / rate:,.1f} s at **{rate:,.0f} "
             f"patches/s** ({result['gpu_rate_source']}){on_cpu}.", "",
             "| K | aggregation, median (min–max) s | share of encoding at the GPU rate (target < 1 %) | "
             "share at this CPU's ViT-B/16 rate |", "|---|---|---|---|"]
    for k, row in result["aggregation"].items():
        ok = "met" if row["share_at_gpu_rate"] < TARGET_FRACTION else "NOT met"
        lines.append(f"| {k} | {row['median_s']:.3f} ({row['min_s']:.3f}–{row['max_s']:.3f}) | "
                     f"**{100 * row['share_at_gpu_rate']:.2f} %** ({ok}) | "
                     + (f"{100 * row['share_at_cpu_rate']:.4f} % |" if row["share_at_cpu_rate"] else "— |"))
    lines += ["", f"Peak extra memory inside `aggregate_slide` (tracemalloc), 200,000 patches × K = 32 × "
              f"{result['dim']}-d: {result['peak_memory_mb_200k_k32']:.1f} MB beyond the float16 input "
              f"({200_000 * result['dim'] * 2 / 2**20:.0f} MB)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
