"""The encoder rate that encoder-dependent targets are judged at: measured by benchmarks/gpu.py, else assumed.

No GPU has been lent to this project yet, so the rate is an assumption until ``benchmarks/gpu.py`` writes its
report; pass that report (``--gpu-report out/gpu/bench_gpu.json``) and the measured ViT-B/16 bf16 rate is used.
"""

from __future__ import annotations

import json
from pathlib import Path

ASSUMED_GPU_PATCHES_PER_S = 1500.0
ASSUMED_SOURCE = ("assumed: a ViT-B/16-class encoder in bf16 on one data-centre GPU (the cluster plan's figure, "
                  "benchmarks/ray_engine.py); no GPU measurement yet")


def gpu_encoder_rate(report: str | Path | None = None) -> tuple[float, str]:
    """(patches/s, where the figure comes from): the best ViT-B/16 bf16 rate of a benchmarks/gpu.py report, else
    the assumed 1,500 patches/s."""
    if report is None:
        return ASSUMED_GPU_PATCHES_PER_S, ASSUMED_SOURCE
    data = json.loads(Path(report).read_text())
    rows = [r for r in data["encode"] if r["model"] == "ViT-B/16" and r["precision"] == "bf16"]
    if not rows:
        raise ValueError(f"{report}: no ViT-B/16 bf16 encoder rows")
    best = max(rows, key=lambda r: r["patches_per_s"])
    return float(best["patches_per_s"]), (f"measured by benchmarks/gpu.py on {data['provenance']['machine']} "
                                          f"(ViT-B/16 bf16, batch {best['batch_size']})")
