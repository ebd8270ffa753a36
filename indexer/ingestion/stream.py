"""The encoder's loop over a run's slides: reader processes prepare and read ahead while this process encodes.

``SlideStream`` takes the jobs the run's rules hand out (``indexer.ingestion.commit``) and gives back one outcome per job,
in the order they came in. One reader pool lives for the whole run (``readers.py``): its workers prepare the next
slides (hash, open, tissue, stain, tiling) and read patches as uint8 into shared slots (``feed.py``), while this
process preprocesses each batch on the encoder's device (``preprocess.py``), encodes it, and stages each finished
slide from a background thread. Memory stays bounded: at most ``lookahead`` slides are in the stream, and the
ring holds a fixed number of batches.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import OrderedDict, defaultdict
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.ingestion.embedding import POLL_S, slots_for
from indexer.engines.job import EncodeJob, SlideOutcome
from indexer.errors import UserError
from indexer.ingestion.feed import Batch, PatchFeed
from indexer.progress import StageProgress
from indexer.ingestion.readers import Fatal, PrepareTask, ReaderPool


@dataclass
class _Slide:
    job: EncodeJob
    record: dict[str, Any]
    timings: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    grid: Any = None
    feats: np.ndarray | None = None
    left: int = -1  # patches still to encode; -1 until prepared
    error: str | None = None
    staged: Future | None = None


class SlideStream:
    """Encode slides in a pipeline; ``submit`` jobs while :attr:`room`, and collect outcomes from :meth:`step`.

    Args:
        config: the run's IndexConfig (tiling, batch size).
        encoder: the loaded image encoder.
        staging: where finished slides are staged (``indexer.store.staging.Staging``).
        pool: the run's reader pool (``ReaderPool(0)``: everything in this process, in turn); the stream
            allocates its ring, and leaves closing it to the caller.
        progress: patch progress bars.
    """

    def __init__(self, config, encoder, staging, pool: ReaderPool, progress: StageProgress | None = None):
        from indexer.models.preprocess import BatchPreprocess

        from indexer.ingestion.prepare import PrepareOptions

        self.config, self.encoder, self.staging = config, encoder, staging
        self.options = PrepareOptions.of(config)
        self.progress = progress or StageProgress(enabled=False)
        self.workers, self.batch = pool.workers, max(1, config.batch_size)
        self.lookahead = 2 * max(1, pool.workers) + 2  # slides in the stream: enough to keep every reader busy
        self.preprocess = BatchPreprocess(encoder.preprocess, config.tiling.patch_px, encoder.device)
        t0 = time.perf_counter()
        self.pool = pool
        pool.allocate(slots_for(pool.workers), self.batch, self.preprocess.input_px)
        self.feed = PatchFeed(pool, self.batch, self.preprocess.reader_resize)
        self._stager = ThreadPoolExecutor(1, thread_name_prefix="slidesearch-stage")
        self._slides: OrderedDict[int, _Slide] = OrderedDict()
        self._unsent: list[int] = []
        self._preparing: dict[int, int] = {}  # prepare task key → slide
        self._seq = iter(range(1 << 62))
        self._patches_seen = 0
        self.timings: dict[str, float] = defaultdict(float, {"start readers": time.perf_counter() - t0})

    @property
    def room(self) -> bool:
        """Whether another job may be submitted."""
        return len(self._slides) < self.lookahead

    @property
    def empty(self) -> bool:
        """No job in the stream."""
        return not self._slides

    def submit(self, job: EncodeJob) -> None:
        """Add a job; it is prepared as soon as a reader is free for it."""
        seq = next(self._seq)
        self._slides[seq] = _Slide(job, {**job.facts, "sha256": job.facts.get("sha256")})
        self._unsent.append(seq)
        self._send_prepares()

    def _send_prepares(self) -> None:
        """At most one slide preparation per reader at a time, so reads never queue behind many of them."""
        while self._unsent and len(self._preparing) < max(1, self.workers):
            seq = self._unsent.pop(0)
            slide, key = self._slides[seq], next(self._seq)
            self._preparing[key] = seq
            self.pool.submit(PrepareTask(key, slide.job.path, slide.record, self.options, slide.job.mpp))

    def step(self) -> list[tuple[EncodeJob, SlideOutcome]]:
        """Do what can be done now (encode a read batch, hand out reads), waiting a little when nothing can;
        returns the jobs finished since, in submission order."""
        self._answer(self.pool.answers(0))
        self.feed.pump()
        batch = self.feed.next_batch()
        if batch is not None:
            self._encode(batch)
        done = self._finished()
        if batch is None and not done:
            t0 = time.perf_counter()
            head = next(iter(self._slides.values()), None)
            if head is not None and head.staged is not None:
                head.staged.exception(POLL_S)
            elif self.pool.busy:
                self._answer(self.pool.answers(POLL_S))
            self.timings["wait"] += time.perf_counter() - t0
            done = self._finished()
        return done

    def _answer(self, answers) -> None:
        for kind, (key, result, error, seconds) in answers:
            if kind == "read":
                self.feed.answer(key, error, seconds)
                self.timings["read"] += seconds
                continue
            seq = self._preparing.pop(key)
            slide = self._slides[seq]
            if isinstance(error, Fatal):
                raise UserError(str(error))
            if result is not None:
                slide.record = result.record
                for stage, spent in result.timings.items():
                    slide.timings[stage] += spent
                error = result.error
            if error is not None:
                slide.error = error
            else:
                self._prepared(seq, slide, result)
        self._send_prepares()

    def _prepared(self, seq: int, slide: _Slide, prepared) -> None:
        slide.grid, slide.left = prepared.grid, len(prepared.grid)
        slide.feats = np.zeros((len(prepared.grid), self.encoder.dim), np.float16)
        self.feed.add(seq, slide.job.path, prepared.mpp, prepared.grid)
        if self._patches_seen == 0:
            self.progress.start_patches(0)
        self._patches_seen += slide.left
        self.progress.more_patches(slide.left)

    def _encode(self, batch: Batch) -> None:
        import torch

        for owner, message in batch.errors.items():
            slide = self._slides.get(owner)
            if slide is not None and slide.error is None:
                slide.error = f"{slide.job.path}: {message}"
        live = [s for s in batch.segments if s.owner in self._slides and self._slides[s.owner].error is None]
        if not live:
            self.feed.release(batch)
            return
        t0 = time.perf_counter()
        try:
            pixels = self.preprocess(torch.from_numpy(self.feed.pixels(batch)))
        finally:
            self.feed.release(batch)
        t1 = time.perf_counter()
        embeddings = self.encoder.encode_images(pixels)
        self.timings["preprocess"] += t1 - t0
        self.timings["embed"] += time.perf_counter() - t1
        for segment in live:
            slide = self._slides[segment.owner]
            n = segment.stop - segment.start
            slide.feats[segment.start:segment.stop] = embeddings[segment.offset:segment.offset + n]
            slide.left -= n
            self.progress.advance_patches(n)

    def _finished(self) -> list[tuple[EncodeJob, SlideOutcome]]:
        """Stage every fully encoded slide; hand back the finished ones from the head, in order."""
        from indexer.store.staging import StagedSlide

        for slide in self._slides.values():
            if slide.error is None and slide.left == 0 and slide.staged is None:
                staged = StagedSlide(slide.record, slide.grid.coords, slide.feats, slide.grid.size)
                slide.staged = self._stager.submit(self._stage, staged)
        out = []
        while self._slides:
            seq, slide = next(iter(self._slides.items()))
            if seq in self._preparing.values() or seq in self._unsent:
                break
            if slide.error is None:
                if slide.staged is None or not slide.staged.done():
                    break
                slide.timings["stage"] += slide.staged.result()
            del self._slides[seq]
            timings = {**slide.timings, **self._take_timings()}
            if slide.error is not None:
                out.append((slide.job, SlideOutcome(slide.record, 0, slide.error, timings)))
            else:
                out.append((slide.job, SlideOutcome(slide.record, len(slide.grid), None, timings)))
        return out

    def _stage(self, staged) -> float:
        t0 = time.perf_counter()
        self.staging.put(staged)
        return time.perf_counter() - t0

    def _take_timings(self) -> dict[str, float]:
        """The stream's own stage times since the last outcome (so a run's totals add up)."""
        taken, self.timings = dict(self.timings), defaultdict(float)
        return taken

    def close(self) -> None:
        """Wait for the stager (the pool stays with its owner)."""
        self._stager.shutdown(wait=True)

    def __enter__(self) -> "SlideStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def run_stream(stream: SlideStream, jobs, accept) -> None:
    """Feed ``jobs`` through ``stream`` and hand each ``(job, outcome)`` to ``accept`` as it finishes."""
    jobs, exhausted = iter(jobs), False
    while True:
        while not exhausted and stream.room:
            job = next(jobs, None)
            if job is None:
                exhausted = True
            else:
                stream.submit(job)
        if exhausted and stream.empty:
            return
        for job, outcome in stream.step():
            accept(job, outcome)


class StreamService:
    """A :class:`SlideStream` driven by a thread of its own, for callers that hand in one job at a time from
    several threads (a Ray actor with concurrent calls): the next job is prepared while the current one encodes.

    Args:
        stream: the stream to drive (closed with the service).
    """

    def __init__(self, stream: SlideStream):
        self.stream = stream
        self._jobs: queue.Queue = queue.Queue()
        self._waiting: dict[int, tuple[EncodeJob, Future]] = {}
        self._thread = threading.Thread(target=self._loop, name="slidesearch-stream", daemon=True)
        self._thread.start()

    def run(self, job: EncodeJob) -> SlideOutcome:
        """Encode and stage ``job``; its outcome (a failed slide is an outcome, not an error)."""
        done: Future = Future()
        self._jobs.put((job, done))
        return done.result()

    def _loop(self) -> None:
        try:
            while True:
                while self.stream.room:
                    try:
                        item = self._jobs.get(block=self.stream.empty)
                    except queue.Empty:
                        break
                    if item is None:
                        return
                    self._waiting[id(item[0])] = item
                    self.stream.submit(item[0])
                for job, outcome in self.stream.step():
                    self._waiting.pop(id(job))[1].set_result(outcome)
        except BaseException as exc:  # noqa: BLE001 - every caller waiting hears of it
            for _, done in self._waiting.values():
                done.set_exception(exc)
            self._waiting.clear()
            while True:  # and so does every later one
                item = self._jobs.get()
                if item is None:
                    return
                item[1].set_exception(exc)

    def close(self) -> None:
        """Stop the thread (after the jobs handed in) and close the stream."""
        self._jobs.put(None)
        self._thread.join()
        self.stream.close()
