"""The commit policy of a run: which slides to skip, refuse, resume or encode, and when waiting slides become a
segment and a version (every ``commit_every`` slides, SEGMENT_MAX_PATCHES patches or ``commit_minutes``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from indexer.engines.job import EncodeJob, SlideOutcome
from indexer.ingestion.config import IndexConfig, IndexReport
from indexer.ingestion.encode import file_facts
from indexer.ingestion.metadata import mpp_overrides
from indexer.models.encoders import file_sha256
from indexer.progress import StageProgress
from indexer.slides.sources import source_facts
from indexer.store.identity import IndexSettings
from indexer.store.writer import IndexWriter


SEGMENT_MAX_PATCHES = 2_000_000  # a run commits a segment at least this often (bounds a segment's FAISS build)
REFINE_SAMPLE = 200_000  # patches (spread over slides) used to refine prototypes


def prototype_table(bank, text_prototypes: np.ndarray):
    """prototypes.parquet without its embedding column: id, name, organs, descriptions, text embedding T."""
    import pyarrow as pa

    return pa.table({
        "proto_id": pa.array(range(len(bank.prototypes)), pa.int32()),
        "name": [p.name for p in bank.prototypes],
        "organs": [list(p.organs) for p in bank.prototypes],
        "descriptions": [list(p.descriptions) for p in bank.prototypes],
        "text_embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(text_prototypes.astype(np.float32).ravel()), text_prototypes.shape[1]),
    })


class PendingRun:
    """The slides of one run waiting for their commit, and the rules that decide each slide's fate.

    Every engine shares these rules: :meth:`jobs` skips, refuses or resumes each slide and yields the ones to
    encode; the engine encodes them (anywhere) and hands each outcome to :meth:`accept`, in any order.
    """

    def __init__(self, writer: IndexWriter, config: IndexConfig, settings: IndexSettings, report: IndexReport,
                 timings: dict[str, float], proto_table, text_prototypes: np.ndarray,
                 progress: StageProgress | None = None, devices: dict[str, str] | None = None):
        self.writer, self.config, self.settings = writer, config, settings
        self.devices = devices or {}
        self.report, self.timings = report, timings
        self.proto_table, self.text_prototypes = proto_table, text_prototypes
        self.progress = progress or StageProgress(enabled=False)
        self.overrides = mpp_overrides(writer.metadata)
        self.ok: list[str] = []
        self.failed: list[dict[str, Any]] = []
        self.replaced: list[str] = []
        self.pending_patches = 0
        self.last_commit = time.monotonic()

    def jobs(self, slides: Iterable[tuple[str, Path]]) -> Iterator[EncodeJob]:
        """The slides to encode, in order; skipped, refused and resumed ones are settled on the way."""
        for slide_id, path in slides:
            self.progress.next_slide(slide_id)
            job = self._plan(slide_id, path)
            if job is None:
                self._settled()
            else:
                yield job

    def accept(self, job: EncodeJob, outcome: SlideOutcome) -> None:
        """Record what encoding ``job`` gave: a staged slide waiting for its commit, or a failure."""
        for stage, seconds in outcome.timings.items():
            self.timings[stage] += seconds
        if outcome.error is not None:
            self._fail(outcome.record, outcome.error, job.live)
        else:
            self.report.indexed.append(job.slide_id)
            self.report.patches_encoded += outcome.n_patches
            self._pending_ok(job.slide_id, outcome.n_patches, job.live)
        self._settled()

    def _settled(self) -> None:
        self.progress.slide_done()
        self.commit_if_due()

    def _plan(self, slide_id: str, path: Path) -> EncodeJob | None:
        """Skip, refuse or resume one slide (None), or the job that encodes it; a failure is recorded, never raised."""
        mpp = self.config.mpp or self.overrides.get(slide_id)
        fingerprint = self.settings.fingerprint(mpp)
        facts = {"slide_id": slide_id, "path": str(path), **source_facts(path, file_facts), "fingerprint": fingerprint,
                 "mpp_override": mpp}
        live = self.writer.live_slides.get(slide_id)
        same_file = live is not None and same_content(live, facts, path)
        if live is not None and live["status"] == "ok":
            if same_file and live["fingerprint"] == fingerprint:
                self.report.skipped.append(slide_id)
                return None
            if not same_file and live["path"] != str(path):
                self.report.failed[slide_id] = (f"slide id {slide_id!r} is already indexed from {live['path']}; "
                                                "remove it first (`slidesearch remove`) or rename this file")
                return None
        staged = self.writer.staging.get(slide_id, with_features=False)
        if staged is not None:
            if staged.record.get("fingerprint") == fingerprint and same_content(staged.record, facts, path):
                self._pending_ok(slide_id, staged.record["n_patches"], live)
                self.report.resumed.append(slide_id)
                return None
            self.writer.staging.remove(slide_id)
            self.report.notes.append(f"{slide_id}: staged with other settings or another file; encoded again")
        return EncodeJob(slide_id, str(path), facts, mpp, live)

    def _pending_ok(self, slide_id: str, n_patches: int, live: dict[str, Any] | None) -> None:
        self.ok.append(slide_id)
        self.pending_patches += int(n_patches)
        if live is not None:
            self.replaced.append(slide_id)

    def _fail(self, record: dict[str, Any], reason: str, live: dict[str, Any] | None) -> None:
        """Report a failed slide; record it in the index unless that would lose committed data or repeat itself."""
        self.report.failed[record["slide_id"]] = reason
        if live is not None and (live["status"] == "ok" or (live["error"] == reason and live["sha256"] == record["sha256"])):
            return  # a slide that indexed fine keeps its committed data; the same failure is not recorded twice
        self.failed.append({**record, "status": "error", "error": reason})
        if live is not None:
            self.replaced.append(record["slide_id"])

    def adopt_leftovers(self, seen: set[str]) -> None:
        """Commit slides an interrupted earlier run staged but this run was not given, when still valid."""
        for slide_id in list(self.writer.staging.slide_ids()):
            if slide_id in seen:
                continue
            staged = self.writer.staging.get(slide_id, with_features=False)
            record = staged.record if staged else {}
            if record.get("fingerprint") == self.settings.fingerprint(record.get("mpp_override")):
                live = self.writer.live_slides.get(slide_id)
                if live is None or live.get("sha256") != record.get("sha256") or live["fingerprint"] != record["fingerprint"]:
                    self._pending_ok(slide_id, record["n_patches"], live)
                    self.report.resumed.append(slide_id)
                    continue
            self.writer.staging.remove(slide_id)

    def commit_if_due(self) -> None:
        """Commit when ``commit_every`` slides or SEGMENT_MAX_PATCHES patches are waiting, or when slides have
        waited ``commit_minutes`` since the last commit."""
        every, minutes, waiting = self.config.commit_every, self.config.commit_minutes, len(self.ok) + len(self.failed)
        if ((every and waiting >= every) or self.pending_patches >= SEGMENT_MAX_PATCHES
                or (minutes and waiting and time.monotonic() - self.last_commit >= 60 * minutes)):
            self.commit()

    def commit(self) -> None:
        """Aggregate the waiting slides into one segment and publish a version."""
        if not (self.ok or self.failed):
            return
        t0 = time.perf_counter()
        prototypes = self.writer.fix_prototypes(self.proto_table, self._prototypes())
        self.timings["prototypes"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        version = self.writer.commit_slides(self.ok, self.failed, self.replaced, prototypes, self.timings,
                                            devices=self.devices)
        self.timings["commit"] += time.perf_counter() - t0
        for stage in ("aggregate", "tables", "faiss"):
            self.timings[stage] += version.timings.get(stage, 0.0)
        self.ok, self.failed, self.replaced, self.pending_patches = [], [], [], 0
        self.last_commit = time.monotonic()

    def _prototypes(self) -> np.ndarray:
        """P for the first commit: the text prototypes, refined on this run's slides when alpha < 1 (DESIGN §3)."""
        alpha, tau = self.settings.aggregation.alpha, self.settings.aggregation.tau
        if alpha >= 1.0 or not self.ok or self.writer.version.number > 0:
            return self.text_prototypes
        from indexer.aggregation.prototypes import refine_prototypes

        per_slide = max(1, REFINE_SAMPLE // len(self.ok))  # an even share keeps memory flat on large collections
        feats = [_evenly_spaced(self.writer.staging.get(s).features, per_slide) for s in self.ok]
        return refine_prototypes(self.text_prototypes, np.concatenate(feats).astype(np.float32), alpha, tau)


def same_content(record: dict[str, Any], facts: dict[str, Any], path: Path) -> bool:
    """Same content as recorded: equal size and mtime, else equal sha256 (known up front for a DICOMweb series)."""
    if facts.get("sha256") is not None:
        return record.get("sha256") == facts["sha256"]
    if (record.get("size_bytes"), record.get("mtime_ns")) == (facts["size_bytes"], facts["mtime_ns"]):
        return True
    if record.get("size_bytes") != facts["size_bytes"]:
        return False
    facts.setdefault("sha256", file_sha256(path))
    return record.get("sha256") == facts["sha256"]


def _evenly_spaced(rows: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` rows spread evenly over ``rows``."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).astype(np.int64)]
