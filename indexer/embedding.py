"""Batched patch embedding: DataLoader workers read and preprocess patches while the encoder runs."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator

import numpy as np

from indexer.errors import SlideError

if TYPE_CHECKING:
    from indexer.encoders import Encoder
    from indexer.tiling import TileGrid


class SlidePatches:
    """Map-style dataset over a tile grid: item ``i`` is ``(i, preprocess(read_patch(i)))``.

    The slide is opened lazily, once per process (each DataLoader worker gets its own handle);
    pickling drops the handle, so workers never share one.
    """

    def __init__(self, slide_path: str | Path, grid: "TileGrid", preprocess: Callable, mpp: float | None = None):
        self.slide_path, self.grid, self.preprocess, self.mpp = slide_path, grid, preprocess, mpp  # a URL stays a str
        self._slide: Any = None

    def open(self) -> Any:
        """The slide handle of this process, opened on first use."""
        if self._slide is None:
            from indexer.slides import open_slide

            self._slide = open_slide(self.slide_path, mpp=self.mpp, require_mpp=False)
        return self._slide

    def __len__(self) -> int:
        return len(self.grid)

    def __getitem__(self, index: int) -> tuple[int, Any]:
        from indexer.tiling import read_patch

        try:
            return index, self.preprocess(read_patch(self.open(), self.grid, index))
        except Exception as exc:  # reported in the main process as one line (workers would wrap it)
            return index, _Failure(str(exc).splitlines()[0] if str(exc) else type(exc).__name__)

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_slide": None}


class _Failure:
    def __init__(self, message: str):
        self.message = message


def _open_in_worker(worker_id: int) -> None:
    """worker_init_fn: open this worker's own slide handle before the first batch."""
    import torch.utils.data

    info = torch.utils.data.get_worker_info()
    try:
        info.dataset.open()
    except Exception:  # the first __getitem__ reports it as a failure
        pass


def _collate(items: list[tuple[int, Any]]) -> tuple[np.ndarray, Any]:
    """Stack patches and keep their grid row indices; pass read failures through."""
    import torch

    rows = np.fromiter((i for i, _ in items), np.int64, len(items))
    failed = [(i, x) for i, x in items if isinstance(x, _Failure)]
    if failed:
        return rows, failed[0]
    return rows, torch.stack([x for _, x in items])


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
        grid: patch grid (``indexer.tiling.tile_slide``).
        encoder: a loaded encoder (``indexer.encoders.load_encoder``).
        mpp: MPP override used when the grid was made (passed to ``open_slide``).
        batch_size: patches per encoder call.
        num_workers: reader processes (one slide handle each); 0 reads in this process.

    Yields:
        ``(rows, embeddings)``: grid indices (int64, ascending) and their (len(rows), dim) float32
        L2-normalised embeddings.

    Raises:
        SlideError: a patch cannot be read.
    """
    import torch.utils.data

    if len(grid) == 0:
        return
    loader = torch.utils.data.DataLoader(
        SlidePatches(slide_path, grid, encoder.preprocess, mpp),
        batch_size=max(1, batch_size),
        shuffle=False,
        num_workers=max(0, num_workers),
        collate_fn=_collate,
        worker_init_fn=_open_in_worker if num_workers > 0 else None,
        persistent_workers=False,
        pin_memory=encoder.device.startswith("cuda"),
    )
    for rows, pixels in loader:
        if isinstance(pixels, tuple):
            index, failure = pixels
            x, y = (int(v) for v in grid.coords[index])
            raise SlideError(f"{slide_path}: cannot read patch {index} at ({x}, {y}): {failure.message}")
        yield rows, encoder.encode_images(pixels)


def embed_slide(slide_path: str | Path, grid: "TileGrid", encoder: "Encoder", **kwargs: Any) -> np.ndarray:
    """All patch embeddings of a slide, in grid order: (len(grid), dim) float32.

    Keyword arguments are those of :func:`iter_slide_embeddings`.
    """
    out = np.zeros((len(grid), encoder.dim), np.float32)
    for rows, embeddings in iter_slide_embeddings(slide_path, grid, encoder, **kwargs):
        out[rows] = embeddings
    return out
