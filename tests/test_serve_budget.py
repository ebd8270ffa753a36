"""The server's budget: slots and memory for expensive jobs, searches before pixels, a bounded queue, then 503."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from indexer.errors import LimitError
from retrieval.serve.budget import MB, Budget, BudgetConfig, BusyError


def run(coro):
    return asyncio.run(coro)


def blocker(release: threading.Event, log: list, name: str):
    def job():
        log.append(("start", name))
        release.wait(10)
        log.append(("end", name))
        return name
    return job


async def one_running(budget: Budget) -> tuple[threading.Event, asyncio.Task]:
    """A job holding a slot until the event is set."""
    release = threading.Event()
    task = asyncio.create_task(budget.run(blocker(release, [], "a")))
    await asyncio.sleep(0.05)
    return release, task


def test_slots_bound_the_jobs_running_and_the_queue_bounds_the_waiting():
    async def main():
        budget = Budget(BudgetConfig(slots=2, memory_mb=64, queue=3, wait_s=5))
        release, log = threading.Event(), []
        running = [asyncio.create_task(budget.run(blocker(release, log, f"r{i}"))) for i in range(2)]
        await asyncio.sleep(0.1)
        waiting = [asyncio.create_task(budget.run(blocker(release, log, f"w{i}"))) for i in range(3)]
        await asyncio.sleep(0.1)
        assert budget.running == 2 and budget.waiting == 3 and sorted(n for e, n in log if e == "start") == ["r0", "r1"]
        with pytest.raises(BusyError) as refused:
            await budget.run(lambda: None)
        assert refused.value.retry_after >= 1 and "busy" in str(refused.value)
        release.set()
        assert await asyncio.gather(*running, *waiting) == ["r0", "r1", "w0", "w1", "w2"]
        assert budget.running == 0 and budget.used == 0 and budget.stats()["refused"] == 1
    run(main())


def test_a_wait_past_the_limit_gets_busy_and_leaves_the_queue():
    async def main():
        budget = Budget(BudgetConfig(slots=1, memory_mb=64, queue=5, wait_s=0.2))
        release, first = await one_running(budget)
        start = time.monotonic()
        with pytest.raises(BusyError):
            await budget.run(lambda: None)
        assert 0.15 < time.monotonic() - start < 2 and budget.waiting == 0
        release.set()
        assert await first == "a" and await budget.run(lambda: "next") == "next"
    run(main())


def test_searches_go_before_pixels_and_memory_is_a_second_bound():
    async def main():
        budget = Budget(BudgetConfig(slots=1, memory_mb=100, queue=10, wait_s=5))
        release, log = threading.Event(), []
        first = asyncio.create_task(budget.run(blocker(release, log, "tile0")))
        await asyncio.sleep(0.05)
        later = [asyncio.create_task(budget.run(lambda n=n: log.append(("run", n)) or n, lane=lane))
                 for n, lane in (("tile1", "pixels"), ("tile2", "pixels"), ("search", "search"))]
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.gather(first, *later)
        assert [n for kind, n in log if kind == "run"] == ["search", "tile1", "tile2"]

        budget = Budget(BudgetConfig(slots=3, memory_mb=100, queue=10, wait_s=5))
        gate = threading.Event()
        big = asyncio.create_task(budget.run(blocker(gate, [], "big"), cost=80 * MB))
        await asyncio.sleep(0.05)  # room in slots, not in memory: a second 80-MB search waits, a small tile passes it
        second = asyncio.create_task(budget.run(lambda: "second", cost=80 * MB, lane="search"))
        small = asyncio.create_task(budget.run(lambda: "small", cost=10 * MB, lane="pixels"))
        assert await small == "small" and not second.done()
        gate.set()
        assert await big == "big" and await second == "second" and budget.used == 0
        with pytest.raises(LimitError, match="over the server's budget of 100 MiB"):
            await budget.run(lambda: None, cost=101 * MB)
    run(main())


def test_uploads_hold_at_most_half_the_slots():
    async def main():
        budget = Budget(BudgetConfig(slots=2, memory_mb=64, queue=5, wait_s=5))
        release, log = threading.Event(), []
        first = asyncio.create_task(budget.run(blocker(release, log, "upload0"), lane="upload"))
        await asyncio.sleep(0.05)
        second = asyncio.create_task(budget.run(blocker(release, log, "upload1"), lane="upload"))
        tile = asyncio.create_task(budget.run(lambda: "tile", lane="pixels"))
        assert await tile == "tile" and not second.done() and budget.stats()["waiting"]["upload"] == 1
        release.set()
        assert await asyncio.gather(first, second) == ["upload0", "upload1"]
    run(main())


def test_a_cancelled_waiter_gives_its_place_back():
    async def main():
        budget = Budget(BudgetConfig(slots=1, memory_mb=64, queue=5, wait_s=5))
        release, first = await one_running(budget)
        waiter = asyncio.create_task(budget.run(lambda: "never"))
        await asyncio.sleep(0.05)
        waiter.cancel()
        await asyncio.sleep(0.05)
        assert budget.waiting == 0
        release.set()
        await first
        assert budget.running == 0 and await budget.run(lambda: "ok") == "ok"
    run(main())


def test_bad_sizes_are_refused_in_one_line():
    for kwargs, needle in (({"slots": 0}, "--concurrency"), ({"memory_mb": 1}, "--memory-budget"), ({"queue": -1}, "--queue")):
        with pytest.raises(Exception, match=needle):
            BudgetConfig(**kwargs)
