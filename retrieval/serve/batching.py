"""Merge concurrent ``encode_text`` calls into one batch in front of an encoder (one worker thread)."""

from __future__ import annotations

import queue
import threading
from typing import Any, Sequence

import numpy as np


class _Job:
    __slots__ = ("texts", "done", "result", "error")

    def __init__(self, texts: list[str]):
        self.texts, self.done, self.result, self.error = texts, threading.Event(), None, None


class TextBatcher:
    """An encoder whose ``encode_text`` calls, from any thread, are encoded together.

    No call waits for company: the worker takes every call queued while it encoded the previous batch
    (up to ``max_batch`` texts), so a lone request pays nothing and a burst shares one forward pass.
    Everything else (``encode_images``, ``dim``, ``weights_sha256`` …) is the wrapped encoder's.

    Args:
        encoder: the encoder to wrap.
        max_batch: most texts per forward pass.
    """

    def __init__(self, encoder: Any, max_batch: int = 64):
        self.encoder, self.max_batch = encoder, max_batch
        self.batches = self.texts = 0  # counters for benchmarks
        self._queue: queue.Queue[_Job] = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="text-batcher", daemon=True)
        self._worker.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.encoder, name)

    def encode_text(self, texts: Sequence[str]) -> np.ndarray:
        """Embed ``texts`` (N, dim), batched with the calls of other threads."""
        job = _Job(list(texts))
        if not job.texts:
            return self.encoder.encode_text([])
        self._queue.put(job)
        job.done.wait()
        if job.error is not None:
            raise job.error
        return job.result

    def _run(self) -> None:
        while True:
            jobs = [self._queue.get()]
            size = len(jobs[0].texts)
            while size < self.max_batch:
                try:
                    job = self._queue.get_nowait()
                except queue.Empty:
                    break
                jobs.append(job)
                size += len(job.texts)
            try:
                out = self.encoder.encode_text([t for j in jobs for t in j.texts])
                self.batches, self.texts = self.batches + 1, self.texts + size
                start = 0
                for j in jobs:
                    j.result, start = out[start:start + len(j.texts)], start + len(j.texts)
            except BaseException as exc:  # noqa: BLE001 - handed to every caller of this batch
                for j in jobs:
                    j.error = exc
            for j in jobs:
                j.done.set()
