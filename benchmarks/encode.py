"""Encoder-only vs end-to-end (read + preprocess + encode) patch throughput on a synthetic slide.

Usage: python -m benchmarks.encode [--models tiny openclip:ViT-B-16] [--device auto|cpu|cuda]
       [--workers 0 1 2] [--repeats 3] [--gpu-report out/gpu/bench_gpu.json] [--out DIR]

End-to-end over encoder-only only tests the pipeline when the encoder is fast: with ViT-B/16 on a CPU (~1 s a
patch) any reader keeps up. So the reader is also timed alone (the same DataLoader, read + preprocess, with an
encoder that returns at once), and the end-to-end ratio a GPU encoder would see is derived from it at the GPU rate
of benchmarks/common.py (measured by benchmarks/gpu.py when ``--gpu-report`` is given, else assumed): the reader and
the encoder overlap, so end-to-end ≈ min(reader, encoder), a ratio of min(1, reader rate / GPU rate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import gpu_encoder_rate, header, provenance, write_outputs
from indexer.ingestion.embedding import iter_slide_embeddings
from indexer.models.encoders import load_encoder
from indexer.slides import open_slide
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide
from indexer.tiles.tiling import TileGrid, TilingConfig, tile_slide

# (patches per run, batch size) per model: a few seconds to half a minute of work per run on 2 CPU cores.
SETTINGS = {"tiny": (1024, 64), "openclip:ViT-B-16": (32, 16)}
DEFAULT_SETTINGS = (128, 32)


def make_slide(workdir: Path) -> tuple[Path, TileGrid]:
    """A 7168 × 7168 px, 0.5 µm/px synthetic slide (1,024 tissue patches of 224 px at 20x)."""
    path = workdir / "bench_slide.tiff"
    if not path.exists():
        kinds = ("tumour", "stroma", "lymphocytes", "necrosis")
        regions = tuple(Region(x * 1792, 0, (x + 1) * 1792, 7168, kinds[x]) for x in range(4))
        write_slide(path, SyntheticSlideSpec(7168, 7168, regions=regions, mpp=0.5, seed=0))
    with open_slide(path) as slide:
        grid = tile_slide(slide, TilingConfig(magnification=20, patch_px=224, min_tissue=0.0))
    return path, grid


def preprocessed(encoder, grid: TileGrid, slide: Path):
    """The grid's patches, read and preprocessed once (the encoder-only input)."""
    import torch

    from indexer.tiles.tiling import read_patch

    with open_slide(slide) as s:
        return torch.stack([encoder.preprocess(read_patch(s, grid, i)) for i in range(len(grid))])


def encoder_only(encoder, pixels) -> float:
    """Images/s of ``encode_images`` on already preprocessed tensors."""
    t0 = time.perf_counter()
    encoder.encode_images(pixels)
    _sync(encoder)
    return len(pixels) / (time.perf_counter() - t0)


def end_to_end(encoder, grid: TileGrid, slide: Path, workers: int) -> float:
    """Patches/s of ``iter_slide_embeddings``: read + preprocess + encode, worker start-up included."""
    t0 = time.perf_counter()
    count = sum(len(rows) for rows, _ in iter_slide_embeddings(slide, grid, encoder, batch_size=encoder.batch_size,
                                                                 num_workers=workers))
    _sync(encoder)
    assert count == len(grid)
    return count / (time.perf_counter() - t0)


class ReaderOnly:
    """The reading side of ``iter_slide_embeddings`` alone: the encoder's preprocessing, no encoding."""

    def __init__(self, encoder):
        self.preprocess, self.dim, self.device, self.batch_size = encoder.preprocess, encoder.dim, "cpu", encoder.batch_size

    def encode_images(self, pixels):
        return np.zeros((len(pixels), self.dim), np.float32)


def bench_model(encoder, grid: TileGrid, slide: Path, workers: list[int], repeats: int) -> dict:
    """Interleaved rounds (encoder-only, then each worker count end to end and reader alone), so load drift hits
    all modes alike. Ratios are taken within a round, then the median over rounds is reported.
    """
    pixels = preprocessed(encoder, grid, slide)
    encoder.encode_images(pixels[: encoder.batch_size])  # warm-up
    enc, e2e, reader = [], {w: [] for w in workers}, {w: [] for w in workers}
    for _ in range(repeats):
        enc.append(encoder_only(encoder, pixels))
        for w in workers:
            e2e[w].append(end_to_end(encoder, grid, slide, w))
            reader[w].append(end_to_end(ReaderOnly(encoder), grid, slide, w))
    med = statistics.median
    return {
        "encoder_only_img_s": round(med(enc), 2),
        "end_to_end": {w: {"patches_s": round(med(v), 2), "ratio": round(med([a / b for a, b in zip(v, enc)]), 3),
                           "reader_only_patches_s": round(med(reader[w]), 2)} for w, v in e2e.items()},
    }


def _sync(encoder) -> None:
    if encoder.device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["tiny", "openclip:ViT-B-16"])
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--workers", nargs="+", type=int, default=[0, 1, 2], help="DataLoader worker counts to try")
    parser.add_argument("--batch-size", type=int, default=None, help="default: per model")
    parser.add_argument("--patches", type=int, default=None, help="patches per run (default: per model)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "slidesearch-bench")
    parser.add_argument("--gpu-report", type=Path, default=None, help="benchmarks/gpu.py's JSON: its measured rate")
    parser.add_argument("--out", type=Path, default=None, help="write bench_encode.json and .md here")
    args = parser.parse_args(argv)
    facts = provenance("benchmarks/encode.py", argv)
    gpu_rate, gpu_source = gpu_encoder_rate(args.gpu_report)

    import torch

    args.workdir.mkdir(parents=True, exist_ok=True)
    slide, full_grid = make_slide(args.workdir)
    rows = []
    for name in args.models:
        checkpoint = "random" if name.startswith("openclip:") else None
        n, batch = SETTINGS.get(name, DEFAULT_SETTINGS)
        n, batch = min(args.patches or n, len(full_grid)), args.batch_size or batch
        encoder = load_encoder(name, checkpoint=checkpoint, device=args.device, batch_size=batch)
        grid = TileGrid(full_grid.coords[:n], full_grid.size, full_grid.level, full_grid.read_px, full_grid.patch_px)
        rows.append({"model": name, "device": encoder.device, "patches": n, "batch_size": batch,
                     **bench_model(encoder, grid, slide, args.workers, args.repeats)})
    result = {"provenance": facts, "torch_threads": torch.get_num_threads(), "repeats": args.repeats,
              "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"), "gpu_rate": gpu_rate, "gpu_rate_source": gpu_source,
              "rows": rows}
    write_outputs(args.out, "encode", result, markdown(result))
    return result


def markdown(result: dict) -> str:
    """One row per (model, workers): encoder-only, end to end, reader alone, and the ratio at the GPU rate."""
    rate = result["gpu_rate"]
    lines = [header(result["provenance"]), "",
             f"Synthetic 7,168² slide at 0.5 µm/px, 20x / 224-px patches; torch {result['torch_threads']} thread(s), "
             f"OMP_WAIT_POLICY={result['omp_wait_policy']}; medians of {result['repeats']} interleaved rounds. GPU "
             f"rate: **{rate:,.0f} patches/s** ({result['gpu_rate_source']}).", "",
             "| model (device, patches, batch) | workers | encoder-only patches/s | end-to-end patches/s (ratio) | "
             "reader alone patches/s | end-to-end / encoder-only at the GPU rate (target ≥ 0.8) |",
             "|---|---|---|---|---|---|"]
    for row in result["rows"]:
        for w, r in row["end_to_end"].items():
            at_gpu = min(1.0, r["reader_only_patches_s"] / rate)
            lines.append(f"| {row['model']} ({row['device']}, {row['patches']}, {row['batch_size']}) | {w} | "
                         f"{row['encoder_only_img_s']:,.1f} | {r['patches_s']:,.1f} ({r['ratio']:.2f}×) | "
                         f"{r['reader_only_patches_s']:,.1f} | **{at_gpu:.2f}×** "
                         f"({'met' if at_gpu >= 0.8 else 'NOT met'}) |")
    lines += ["", "The measured ratio only tests the pipeline when the encoder is faster than the reader (tiny here); "
              "the last column is what the reader measured here would give a GPU encoder at the rate above. "
              "A CUDA machine measures it directly: `python -m benchmarks.gpu` (`index` end to end against "
              "encoder-only)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
