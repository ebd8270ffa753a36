"""Batched patch embedding of one slide: reader processes read uint8 patches while the encoder runs.

Many slides in a row go through ``indexer.ingestion.stream.SlideStream``, which keeps one reader pool for the whole run;
this module embeds one grid (tests, benchmarks, a query slide) with the same readers and preprocessing.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from indexer.errors import SlideError

if TYPE_CHECKING:
    from indexer.models.encoders import Encoder
    from indexer.ingestion.feed import Batch, PatchFeed
    from indexer.models.preprocess import BatchPreprocess
    from indexer.tiles.tiling import TileGrid

POLL_S = 0.5  # longest wait for a reader's answer before looking at the readers again


def slots_for(workers: int) -> int:
    """Batches in flight: two per reader (one read, one queued) and one being encoded."""
    return 2 * max(1, workers) + 1


def encode_batch(encoder: "Encoder", preprocess: "BatchPreprocess", feed: "PatchFeed", batch: "Batch") -> np.ndarray:
    """Preprocess and embed a read batch, giving its slot back as soon as the pixels are consumed."""
    import torch

    try:
        pixels = preprocess(torch.from_numpy(feed.pixels(batch)))
    finally:
        feed.release(batch)
    return encoder.encode_images(pixels)


def iter_slide_embeddings(
    slide_path: str | Path,
    grid: "TileGrid",
    encoder: "Encoder",
    *,
    mpp: float | None = None,
    batch_size: int = 64,
    num_workers: int = 2,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Embed every patch of ``grid``, streaming one batch at a time (memory independent of slide size).

    Args:
        slide_path: the slide file the grid was made from.
        grid: patch grid (``indexer.tiles.tiling.tile_slide``).
        encoder: a loaded encoder (``indexer.models.encoders.load_encoder``).
        mpp: MPP override used when the grid was made (passed to ``open_slide``).
        batch_size: patches per encoder call.
        num_workers: reader processes; 0 reads in this process.

    Yields:
        ``(rows, embeddings)``: grid indices (int64, ascending) and their (len(rows), dim) float32
        L2-normalised embeddings.

    Raises:
        SlideError: a patch cannot be read.
    """
    from indexer.ingestion.feed import PatchFeed
    from indexer.models.preprocess import BatchPreprocess
    from indexer.ingestion.readers import ReaderPool

    if len(grid) == 0:
        return
    batch_size = max(1, batch_size)
    preprocess = BatchPreprocess(encoder.preprocess, grid.patch_px, encoder.device)
    with ReaderPool(num_workers) as pool:
        pool.allocate(slots_for(num_workers), batch_size, preprocess.input_px)
        feed = PatchFeed(pool, batch_size, preprocess.reader_resize)
        feed.add(0, str(slide_path), mpp, grid)
        while not feed.idle:
            feed.pump()
            batch = feed.next_batch()
            if batch is None:
                for kind, (key, _, error, seconds) in pool.answers(POLL_S):
                    feed.answer(key, error, seconds)
                continue
            if batch.errors:
                feed.release(batch)
                raise SlideError(f"{slide_path}: {batch.errors[0]}")
            segment = batch.segments[0]
            yield np.arange(segment.start, segment.stop, dtype=np.int64), encode_batch(encoder, preprocess, feed, batch)


def embed_slide(slide_path: str | Path, grid: "TileGrid", encoder: "Encoder", **kwargs: Any) -> np.ndarray:
    """All patch embeddings of a slide, in grid order: (len(grid), dim) float32.

    Keyword arguments are those of :func:`iter_slide_embeddings`.
    """
    out = np.zeros((len(grid), encoder.dim), np.float32)
    for rows, embeddings in iter_slide_embeddings(slide_path, grid, encoder, **kwargs):
        out[rows] = embeddings
    return out
