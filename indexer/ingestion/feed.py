"""Batches of patches, in order, read ahead by the reader pool into its shared slots.

Slides are queued with their grids; their patches are cut into batches of ``batch_size`` (a batch may hold the
end of one slide and the start of the next, so small slides still fill the encoder's batches), and every free
slot is handed a batch to read. The encoding process takes batches back in the order they were cut.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any, Hashable

import numpy as np

from indexer.ingestion.readers import ReaderPool, ReadTask


@dataclass
class Segment:
    """Rows ``start:stop`` of one slide's grid, at ``offset`` in their batch."""

    owner: Hashable
    start: int
    stop: int
    offset: int


@dataclass
class Batch:
    """One slot's worth of patches: its segments, the read tasks still out, and any slide's read error."""

    slot: int
    segments: list[Segment]
    waiting: set[int] = field(default_factory=set)
    errors: dict[Hashable, str] = field(default_factory=dict)
    read_s: float = 0.0

    @property
    def size(self) -> int:
        return sum(s.stop - s.start for s in self.segments)


@dataclass
class _Queued:
    owner: Hashable
    path: str
    mpp: float | None
    grid: Any
    next_row: int = 0


class PatchFeed:
    """Cut queued slides into batches and keep every free slot of ``pool`` reading one.

    Args:
        pool: the reader pool (its slots hold ``batch_size`` patches).
        batch_size: patches per batch.
        resize: what readers resize patches to, ((h, w), mode), or None (``BatchPreprocess.reader_resize``).
    """

    def __init__(self, pool: ReaderPool, batch_size: int, resize: tuple | None = None):
        self.pool, self.batch_size, self.resize = pool, batch_size, resize
        self._queued: deque[_Queued] = deque()
        self._batches: deque[Batch] = deque()
        self._free = list(range(pool.shape[0]))
        self._tasks: dict[int, tuple[Batch, Hashable]] = {}
        self._keys = iter(range(1, 1 << 62))

    def add(self, owner: Hashable, path: str, mpp: float | None, grid: Any) -> None:
        """Queue every patch of ``grid`` (a slide's ``TileGrid``), read from ``path``, for ``owner``."""
        if len(grid):
            self._queued.append(_Queued(owner, str(path), mpp, grid))

    def pump(self) -> None:
        """Hand out batches while slots are free and patches wait."""
        while self._free and self._queued:
            batch, filled = Batch(self._free.pop(0), []), 0
            while filled < self.batch_size and self._queued:
                q = self._queued[0]
                stop = min(len(q.grid), q.next_row + self.batch_size - filled)
                batch.segments.append(Segment(q.owner, q.next_row, stop, filled))
                self._read(batch, q, q.next_row, stop, filled)
                filled += stop - q.next_row
                q.next_row = stop
                if stop == len(q.grid):
                    self._queued.popleft()
            self._batches.append(batch)

    def _read(self, batch: Batch, q: _Queued, start: int, stop: int, offset: int) -> None:
        key = next(self._keys)
        batch.waiting.add(key)
        self._tasks[key] = (batch, q.owner)
        grid = q.grid
        self.pool.submit(ReadTask(key, q.path, q.mpp, grid.level, grid.read_px, grid.patch_px,
                                  np.ascontiguousarray(grid.coords[start:stop]), start, batch.slot, offset, self.resize))

    def answer(self, key: int, error: str | None, seconds: float) -> None:
        """Record the answer to read task ``key``."""
        batch, owner = self._tasks.pop(key)
        batch.waiting.discard(key)
        batch.read_s += seconds
        if error is not None:
            batch.errors.setdefault(owner, error)

    def next_batch(self) -> Batch | None:
        """The oldest batch, once all of it is read; None while it is still being read (or none is out)."""
        if self._batches and not self._batches[0].waiting:
            return self._batches.popleft()
        return None

    def pixels(self, batch: Batch) -> np.ndarray:
        """The batch's patches, (n, px, px, 3) uint8, in its slot (valid until :meth:`release`)."""
        return self.pool.slots[batch.slot][: batch.size]

    def release(self, batch: Batch) -> None:
        """Give the batch's slot back."""
        self._free.append(batch.slot)

    @property
    def idle(self) -> bool:
        """Nothing queued and no batch out."""
        return not self._queued and not self._batches
