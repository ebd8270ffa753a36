"""Aggregation cost vs. patch encoding: ProAlign pooling of 100,000 patches against ViT-B/16 throughput.

Run: python benchmarks/aggregate.py [--patches 100000] [--repeats 5] [--encoder-batches 3] [--json OUT]
Prints the median aggregation time for K = 16 and K = 32 (d = 512, float16 features), the peak extra
memory of aggregation at 200,000 patches, the measured ViT-B/16 images/s (random weights, batches of
32×3×224×224) and the ratio aggregation / encoding extrapolated to the same number of patches.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import tracemalloc
from pathlib import Path

import numpy as np

from indexer.aggregate import AggregationConfig, aggregate_slide, l2_normalize

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patches", type=int, default=100_000, help="patches per slide")
    parser.add_argument("--repeats", type=int, default=5, help="timed aggregation runs per K")
    parser.add_argument("--encoder-batches", type=int, default=3, help="timed ViT-B/16 batches of 32")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()

    config = AggregationConfig()
    X = random_unit(args.patches, DIM, seed=0, dtype=np.float16)
    rows = {}
    for k in (16, 32):
        times = time_aggregation(X, k, args.repeats, config)
        rows[k] = {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times)}
    del X
    peak = peak_memory_mb(200_000, 32, config)
    ips = encoder_images_per_second(args.encoder_batches)
    encode_s = args.patches / ips

    print(f"aggregation of {args.patches:,} patches × {DIM}-d (float16), chunk {config.chunk}, "
          f"median of {args.repeats}")
    print(f"{'K':>4} {'median s':>10} {'min s':>8} {'max s':>8} {'% of encoding':>14} {'< 1 %':>6}")
    for k, row in rows.items():
        row["fraction_of_encoding"] = row["median_s"] / encode_s
        ok = row["fraction_of_encoding"] < TARGET_FRACTION
        print(f"{k:>4} {row['median_s']:>10.3f} {row['min_s']:>8.3f} {row['max_s']:>8.3f} "
              f"{100 * row['fraction_of_encoding']:>13.4f}% {'yes' if ok else 'NO':>6}")
    print(f"ViT-B/16 (random weights, batch 32, median of {args.encoder_batches}): {ips:.1f} images/s "
          f"→ {encode_s:,.0f} s for {args.patches:,} patches")
    print(f"peak extra memory of aggregation, 200,000 patches × K=32 × {DIM}-d: {peak:.1f} MB "
          f"(the float16 input itself: {200_000 * DIM * 2 / 2**20:.0f} MB)")
    if args.json:
        args.json.write_text(json.dumps({
            "patches": args.patches, "dim": DIM, "chunk": config.chunk, "tau": config.tau,
            "aggregation": {str(k): v for k, v in rows.items()}, "encoder_images_per_s": ips,
            "encode_s": encode_s, "peak_memory_mb_200k_k32": peak,
        }, indent=2))


if __name__ == "__main__":
    main()
