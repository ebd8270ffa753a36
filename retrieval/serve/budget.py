"""One server-wide budget for expensive work (searches, encoding, decoded uploads, slide reads, heatmaps).

A job holds one of ``slots`` (work running at once) and its estimated working memory out of ``memory``
bytes (a decoded upload: its pixels; a heatmap: the slide's patch features). A job that does not fit waits
in a queue (searches ahead of pixels by a second, each lane in order) of at most ``queue`` requests in all,
for at most ``wait_s`` seconds; past either it gets :class:`BusyError` (HTTP 503 with ``Retry-After``).
Waiting happens on the event loop without blocking it (an ``asyncio`` future per waiter); the job itself runs
in a worker thread of the budget's own pool, so requests outside the budget (health, info, the page) never
wait behind it."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from indexer.errors import LimitError, UserError

T = TypeVar("T")
MB = 1 << 20
# lane → (seconds its jobs give way to others': a deadline's slack; the share of the slots it may hold)
LANES = {"search": (0.0, 1.0), "upload": (0.0, 0.5), "pixels": (1.0, 1.0)}


class BusyError(UserError):
    """The server is at its budget and its wait queue is full, or the wait ran out (HTTP 503)."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class BudgetConfig:
    """Sizes of the budget (``slidesearch serve --concurrency --memory-budget --queue --queue-wait``).

    Args:
        slots: jobs running at once (default: the CPU count, at least 2).
        memory_mb: MiB of estimated working memory of the jobs running at once (a 2^25-px upload decodes to
            ~256 MiB; a JPEG is decoded at the scale the model needs, far less).
        queue: requests waiting for the budget; one more gets 503 at once.
        wait_s: seconds a request waits at most, then 503.
    """

    slots: int | None = None
    memory_mb: int = 512
    queue: int = 64
    wait_s: float = 15.0

    def __post_init__(self) -> None:
        if self.slots is not None and self.slots < 1:
            raise UserError(f"--concurrency {self.slots}: expected at least 1")
        if self.memory_mb < 64:
            raise UserError(f"--memory-budget {self.memory_mb}: expected at least 64 (MiB)")
        if self.queue < 0 or not self.wait_s > 0:
            raise UserError(f"--queue {self.queue} / --queue-wait {self.wait_s}: expected a queue >= 0 and a wait > 0 s")


class Budget:
    """Slots and memory for expensive jobs, bounded FIFO queues in front (see the module docstring).

    Jobs wait in one of ``LANES``; a free slot goes to the waiting job with the earliest deadline, its arrival plus
    its lane's slack. A search (a person waiting on it, milliseconds of work) thus passes the tiles, crops and
    heatmaps that arrived less than a second before it, so it does not queue behind a page of tiles, and pixels
    still go ahead of searches that came a second after them (no lane starves). Uploads (a decode of up to
    33.5 MP, ~0.2 s of CPU) hold at most half the slots, so a flood of them leaves the rest to everyone else. A job
    that does not fit (in memory, or in its lane's share) lets another lane's job pass; within a lane, jobs are
    granted in order.
    """

    def __init__(self, config: BudgetConfig = BudgetConfig()):
        import anyio

        self.slots = config.slots or max(2, os.cpu_count() or 2)
        self.memory, self.queue, self.wait_s = config.memory_mb * MB, config.queue, config.wait_s
        self.running = self.used = 0
        self.served = self.refused = 0
        self._waiters: dict[str, deque[tuple[float, int, asyncio.Future]]] = {lane: deque() for lane in LANES}
        self._cap = {lane: max(1, int(self.slots * share)) for lane, (_, share) in LANES.items()}
        self._in_lane = dict.fromkeys(LANES, 0)
        self._seconds = 0.5  # moving average of a job's duration, for Retry-After
        self._limiter = anyio.CapacityLimiter(self.slots)

    @property
    def waiting(self) -> int:
        return sum(len(q) for q in self._waiters.values())

    def stats(self) -> dict[str, Any]:
        """Running and waiting jobs, memory held, jobs served and refused (for ``/api/info``)."""
        return {"slots": self.slots, "memory_mb": self.memory // MB, "queue": self.queue, "wait_s": self.wait_s,
                "running": self.running, "waiting": {lane: len(q) for lane, q in self._waiters.items()},
                "memory_used_mb": round(self.used / MB, 1), "served": self.served, "refused": self.refused}

    async def run(self, fn: Callable[..., T], *args: Any, cost: int = 0, lane: str = "pixels") -> T:
        """``fn(*args)`` in a worker thread once a slot and ``cost`` bytes are free (BusyError when not in time).

        Args:
            lane: ``search``, ``upload`` or ``pixels`` (``LANES``).
        """
        import anyio

        cost = max(0, int(cost))
        if cost > self.memory:
            raise LimitError(f"this request needs about {cost / MB:,.0f} MiB of working memory, over the server's "
                             f"budget of {self.memory // MB:,} MiB (slidesearch serve --memory-budget)")
        await self._acquire(cost, lane)
        start = time.monotonic()
        try:
            return await anyio.to_thread.run_sync(fn, *args, limiter=self._limiter)
        finally:
            self._seconds = 0.9 * self._seconds + 0.1 * (time.monotonic() - start)
            self._release(cost, lane)

    def _fits(self, cost: int, lane: str) -> bool:
        return self.running < self.slots and self._in_lane[lane] < self._cap[lane] and self.used + cost <= self.memory

    async def _acquire(self, cost: int, lane: str) -> None:
        if self.waiting >= self.queue:
            self.refused += 1
            raise BusyError(f"the server is busy ({self.running} requests running, {self.waiting} waiting); "
                            "try again shortly", self.retry_after())
        future = asyncio.get_running_loop().create_future()
        entry, queue = (time.monotonic() + LANES[lane][0], cost, future), self._waiters[lane]
        queue.append(entry)
        self._wake()
        if future.done():
            return
        try:
            await asyncio.wait({future}, timeout=self.wait_s)
        except BaseException:  # cancelled while waiting: give back a grant that came, or leave the queue
            self._leave(lane, entry)
            raise
        if not future.done():
            self._leave(lane, entry)
            self.refused += 1
            raise BusyError(f"the server is busy: no capacity within {self.wait_s:g} s; try again shortly",
                            self.retry_after())

    def _leave(self, lane: str, entry: tuple[float, int, asyncio.Future]) -> None:
        if entry[2].done():
            self._release(entry[1], lane)
        else:
            entry[2].cancel()
            self._waiters[lane].remove(entry)
            self._wake()

    def _release(self, cost: int, lane: str) -> None:
        self.running -= 1
        self._in_lane[lane] -= 1
        self.used -= cost
        self._wake()

    def _wake(self) -> None:
        """Grant waiting jobs while one fits: of the lanes' first jobs, the earliest deadline that fits."""
        while True:
            heads = sorted((q[0][0], lane) for lane, q in self._waiters.items() if q)
            lane = next((lane for _, lane in heads if self._fits(self._waiters[lane][0][1], lane)), None)
            if lane is None:
                return
            _, cost, future = self._waiters[lane].popleft()
            self.running += 1
            self._in_lane[lane] += 1
            self.used += cost
            self.served += 1
            future.set_result(None)

    def retry_after(self) -> int:
        """Seconds a refused client should wait: the queue ahead of it at the recent job duration."""
        return max(1, math.ceil(self._seconds * (self.waiting + 1) / self.slots))
