"""Reader processes that live for a whole run: they prepare slides and read patches into shared memory.

A run starts ``workers`` processes once (fresh interpreters: they import neither torch nor the model, and
inherit no locks, threads or open files). Each one takes two kinds of task from the encoding process:

- ``prepare``: hash, open, detect tissue and stain, and tile one slide (``indexer.ingestion.prepare.prepare_slide``);
- ``read``: read a run of a slide's patches as uint8 RGB straight into a slot of a shared-memory ring,
  from which the encoding process preprocesses and encodes them without another copy.

Workers are started as ``python -m indexer.ingestion.readers`` on a socket pair (multiprocessing's spawn would re-run
the caller's main script). Tasks go to the worker expected to finish first (the work queued on it, from
measured costs), so a read for the batch the encoder waits on is not stuck behind a slow slide preparation.
A worker that dies (a decoder crash, the OOM killer) fails the slides of the tasks it held, in one line each,
and is replaced. With ``workers=0`` the same tasks run in the calling process.
"""

from __future__ import annotations

import os
import time
from collections import OrderedDict, deque
from dataclasses import dataclass
from typing import Any

import numpy as np

OPEN_SLIDES = 4  # slide handles a reader keeps open
PREPARE_GUESS_S, READ_GUESS_S = 0.1, 0.001  # cost estimates before the first measurements


def resolve_workers(workers: int | None, device: str = "cpu") -> int:
    """``workers`` as given, or (None) one reader per core, one fewer when a GPU encodes (its feeder needs a core)."""
    if workers is not None:
        return max(0, int(workers))
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores - 1) if device.startswith("cuda") else max(1, cores)


@dataclass(frozen=True)
class PrepareTask:
    """Prepare one slide: ``indexer.ingestion.prepare.prepare_slide(path, record, options, mpp)``."""

    key: int
    path: str
    record: dict
    options: Any  # indexer.ingestion.prepare.PrepareOptions
    mpp: float | None


@dataclass(frozen=True)
class ReadTask:
    """Read ``coords`` (level-0 x, y; grid rows from ``first_row`` on) of a slide into ``slot`` from ``offset`` on,
    resized with Pillow to ``resize`` = ((h, w), mode) when given (``indexer.models.preprocess``)."""

    key: int
    path: str
    mpp: float | None
    level: int
    read_px: int
    patch_px: int
    coords: np.ndarray
    first_row: int
    slot: int
    offset: int
    resize: tuple | None = None


def run_task(task, slides: "OrderedDict[tuple, Any]", slot_of) -> tuple:
    """Do one task; the answer is ``(key, result, error, seconds)`` (errors in one line, never raised; a
    :class:`Fatal` error stops the run)."""
    from indexer.errors import failure_reason

    t0 = time.perf_counter()
    try:
        if isinstance(task, PrepareTask):
            return task.key, _prepare(task), None, time.perf_counter() - t0
        _read(task, slides, slot_of(task.slot))
        return task.key, None, None, time.perf_counter() - t0
    except ImportError as exc:  # a broken installation, not a property of the slide: the run stops
        return task.key, None, Fatal(f"{type(exc).__name__}: {exc}"), time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - one slide's failure is an answer, not a crash
        return task.key, None, failure_reason(exc), time.perf_counter() - t0


class Fatal(str):
    """An answer's error that stops the run (a broken installation), not just its slide."""


def _prepare(task: PrepareTask):
    """The prepared slide, or its record so far with the reason it failed."""
    from indexer.errors import failure_reason
    from indexer.ingestion.prepare import PreparedSlide, prepare_slide

    record, timings = dict(task.record), {}
    try:
        return prepare_slide(task.path, record, task.options, task.mpp, timings)
    except ImportError:
        raise
    except Exception as exc:  # noqa: BLE001 - the slide fails, with what was learnt of it
        return PreparedSlide(record, None, task.mpp, timings, failure_reason(exc))


def _kind(task) -> str:
    return "prepare" if isinstance(task, PrepareTask) else "read"


def _read(task: ReadTask, slides, slot: np.ndarray) -> None:
    from indexer.errors import SlideError
    from indexer.models.preprocess import resize_like_pil
    from indexer.slides import open_slide
    from indexer.tiles.tiling import read_patch_array

    key = (task.path, task.mpp)
    for i, (x, y) in enumerate(task.coords):
        try:
            slide = slides.pop(key, None) or open_slide(task.path, mpp=task.mpp, require_mpp=False)
            slides[key] = slide
            while len(slides) > OPEN_SLIDES:
                slides.popitem(last=False)[1].close()
            patch = read_patch_array(slide, task.level, task.read_px, task.patch_px, int(x), int(y))
            slot[task.offset + i] = resize_like_pil(patch, task.resize)
        except Exception as exc:  # noqa: BLE001 - which patch failed, in one line
            text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise SlideError(f"cannot read patch {task.first_row + i} at ({int(x)}, {int(y)}): {text}") from None


def serve(fd: int) -> None:
    """A reader process: warm its imports, then answer what comes over the socket ``fd`` (the ring to attach,
    then tasks) until it sends None or closes."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    _warm_imports()
    shm, slots = None, None
    slides: OrderedDict[tuple, Any] = OrderedDict()
    try:
        while True:
            try:
                task = conn.recv()
            except (EOFError, OSError):
                break
            if task is None:
                break
            if isinstance(task, tuple):  # ("attach", name, shape): the pool's ring
                shm = _attach(task[1])
                slots = np.ndarray(task[2], np.uint8, buffer=shm.buf)
                continue
            conn.send((_kind(task), run_task(task, slides, lambda i: slots[i])))
    finally:
        for slide in slides.values():
            slide.close()
        del slots
        if shm is not None:
            shm.close()


def _warm_imports() -> None:
    """Import what tasks use while the encoder loads, so the first slide does not pay for it."""
    import openslide  # noqa: F401
    import tifffile  # noqa: F401
    from scipy.ndimage import gaussian_filter  # noqa: F401
    from skimage import color, filters, morphology  # noqa: F401

    import indexer.ingestion.prepare  # noqa: F401
    import indexer.tiles.stain  # noqa: F401
    import indexer.tiles.tiling  # noqa: F401

    try:
        import imagecodecs  # noqa: F401
    except ImportError:  # OpenSlide reads every slide then (slower)
        pass


def _attach(name: str):
    """The shared memory the pool created, attached without registering it: only its creator unlinks it."""
    from multiprocessing import resource_tracker, shared_memory

    try:
        return shared_memory.SharedMemory(name=name, track=False)  # Python 3.13+
    except TypeError:
        register = resource_tracker.register
        resource_tracker.register = lambda *args, **kwargs: None  # bpo-39959: an attach would register it again
        try:
            return shared_memory.SharedMemory(name=name)
        finally:
            resource_tracker.register = register


class ReaderPool:
    """``workers`` reader processes, started at once (their imports warm up meanwhile), and a shared ring of
    uint8 batches they read into, from :meth:`allocate` on.

    Args:
        workers: reader processes (0: tasks run in this process when submitted).
    """

    def __init__(self, workers: int):
        self.workers, self.shape = workers, (0,)
        self._shm = None
        self.slots = np.zeros(self.shape, np.uint8)
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._held: list[dict[tuple, tuple[Any, float]]] = []  # per worker: (kind, key) → (task, expected seconds)
        self._done: deque = deque()
        self._open_here: OrderedDict[tuple, Any] = OrderedDict()
        self._costs = {"prepare": PREPARE_GUESS_S, "read": READ_GUESS_S}
        for _ in range(workers):
            self._start_worker()

    def allocate(self, slots: int, batch: int, side: tuple[int, int]) -> None:
        """The ring: ``slots`` batches of ``batch`` patches of ``side`` = (h, w) px, as the readers send them."""
        from multiprocessing import shared_memory

        self._free_ring()
        self.shape = (slots, batch, int(side[0]), int(side[1]), 3)
        if not self._procs:
            self.slots = np.zeros(self.shape, np.uint8)
            return
        self._shm = shared_memory.SharedMemory(create=True, size=int(np.prod(self.shape)))
        self.slots = np.ndarray(self.shape, np.uint8, buffer=self._shm.buf)
        for conn in self._conns:
            conn.send(("attach", self._shm.name, self.shape))

    def _start_worker(self, index: int | None = None) -> None:
        """Start ``python -m indexer.ingestion.readers`` on one end of a socket pair: a fresh interpreter that imports
        neither torch nor the caller's ``__main__``, and inherits no other file (an index's lock included)."""
        import socket
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        here, there = socket.socketpair()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
        proc = subprocess.Popen([sys.executable, "-m", "indexer.ingestion.readers", str(there.fileno())],
                                pass_fds=(there.fileno(),), env=env, stdin=subprocess.DEVNULL)
        there.close()
        conn = Connection(here.detach())
        if self._shm is not None:
            conn.send(("attach", self._shm.name, self.shape))
        if index is None:
            self._procs.append(proc)
            self._conns.append(conn)
            self._held.append({})
        else:
            self._procs[index], self._conns[index], self._held[index] = proc, conn, {}

    def submit(self, task: PrepareTask | ReadTask) -> None:
        """Hand ``task`` to the worker expected to finish it first (or run it now, without workers)."""
        kind = _kind(task)
        cost = self._costs[kind] * (1 if kind == "prepare" else len(task.coords))
        if not self._procs:
            self._done.append((kind, run_task(task, self._open_here, lambda i: self.slots[i])))
            return
        loads = [sum(c for _, c in held.values()) for held in self._held]
        best = int(np.argmin(loads))
        self._held[best][(kind, task.key)] = (task, cost)
        self._conns[best].send(task)

    def answers(self, timeout: float | None = None) -> list[tuple[str, tuple]]:
        """Finished tasks as ``(kind, (key, result, error, seconds))``; waits up to ``timeout`` for the first."""
        from multiprocessing.connection import wait

        if self._done or not self._procs:
            out = list(self._done)
            self._done.clear()
            return out
        ready = wait(self._conns, timeout)
        out = []
        for i, conn in enumerate(self._conns):
            if conn not in ready:
                continue
            try:
                while conn.poll():
                    out.append(self._received(i, conn.recv()))
            except (EOFError, OSError):  # the worker is gone
                out.extend(self._replace(i))
        return out

    def _received(self, worker: int, message: tuple) -> tuple[str, tuple]:
        kind, answer = message
        task, _ = self._held[worker].pop((kind, answer[0]))
        if answer[2] is None:  # learn the costs: an average that follows drift
            per = answer[3] / (1 if kind == "prepare" else max(1, len(task.coords)))
            self._costs[kind] = 0.8 * self._costs[kind] + 0.2 * per
        return kind, answer

    def _replace(self, worker: int) -> list[tuple[str, tuple]]:
        """A worker died: its tasks fail in one line each, and a new worker takes its place."""
        proc = self._procs[worker]
        try:
            code = proc.wait(5.0)
        except Exception:  # noqa: BLE001 - still alive though its socket broke: stop it
            proc.kill()
            code = proc.wait()
        why = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        lost = [(kind, (key, None, f"a reader process died while reading this slide ({why})", 0.0))
                for (kind, key) in self._held[worker]]
        self._conns[worker].close()
        self._start_worker(worker)
        return lost

    @property
    def pids(self) -> list[int]:
        """Process ids of the workers."""
        return [proc.pid for proc in self._procs]

    @property
    def busy(self) -> bool:
        """Whether tasks are waiting for an answer."""
        return bool(self._done) or any(self._held)

    def close(self) -> None:
        """Stop the workers and free the shared memory."""
        for conn in self._conns:
            try:
                conn.send(None)
            except (OSError, ValueError):
                pass
        for proc in self._procs:
            try:
                proc.wait(5.0)
            except Exception:  # noqa: BLE001 - a reader that does not stop is stopped
                proc.kill()
                proc.wait()
        for conn in self._conns:
            conn.close()
        self._procs, self._conns, self._held = [], [], []
        for slide in self._open_here.values():
            slide.close()
        self._open_here.clear()
        self._free_ring()

    def _free_ring(self) -> None:
        self.slots = np.zeros((0,), np.uint8)
        if self._shm is not None:
            self._shm.close()
            self._shm.unlink()
            self._shm = None

    def __enter__(self) -> "ReaderPool":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


if __name__ == "__main__":
    import sys

    from indexer.ingestion.readers import serve as _serve  # the importable module's classes, not __main__'s

    _serve(int(sys.argv[1]))
