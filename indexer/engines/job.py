"""One slide's work, the same in every engine: hash, encode and stage it, or say why it failed."""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from indexer.ingestion.encode import encode_slide
from indexer.models.encoders import file_sha256
from indexer.errors import failure_reason
from indexer.progress import StageProgress
from indexer.store.staging import Staging


@dataclass(frozen=True)
class EncodeJob:
    """A slide the run's rules decided to encode.

    Attributes:
        slide_id: its id.
        path: the slide file or DICOM folder (on storage every worker sees at the same path), or DICOMweb URL.
        facts: slide_id, path, size_bytes, mtime_ns, fingerprint, mpp_override (and sha256 when known).
        mpp: microns per pixel given for it (None: the file's).
        live: its committed record, when the index has one (decides what a commit replaces).
    """

    slide_id: str
    path: str
    facts: dict[str, Any]
    mpp: float | None = None
    live: dict[str, Any] | None = None

    def failed(self, reason: str) -> "SlideOutcome":
        """The outcome of a job that could not run to its end (its worker kept dying)."""
        return SlideOutcome({**self.facts, "sha256": self.facts.get("sha256")}, 0, reason)


@dataclass(frozen=True)
class SlideOutcome:
    """What encoding one slide gave.

    Attributes:
        record: the slide's facts (with sha256 and what opening it told).
        n_patches: patches staged (0 on failure).
        error: why it failed, in one line; None when it is staged.
        timings: stage → seconds spent on it.
    """

    record: dict[str, Any]
    n_patches: int
    error: str | None = None
    timings: dict[str, float] = field(default_factory=dict)


def run_job(job: EncodeJob, config, encoder, staging: Staging, progress: StageProgress | None = None) -> SlideOutcome:
    """Encode ``job``'s slide and stage it; a failure of the slide is returned, never raised.

    Args:
        job: the slide.
        config: the run's IndexConfig.
        encoder: the loaded image encoder.
        staging: the index's staging folder (shared by every worker).
        progress: patch progress bars.

    Raises:
        ImportError: a broken installation is not a property of this slide.
    """
    timings: dict[str, float] = defaultdict(float)
    record = {**job.facts, "sha256": job.facts.get("sha256") or file_sha256(job.path)}
    try:
        encoded = encode_slide(job.path, record, config, encoder, job.mpp, timings, progress)
    except ImportError:
        raise
    except Exception as exc:  # one slide's failure never stops the run
        return SlideOutcome(record, 0, failure_reason(exc), dict(timings))
    t0 = time.perf_counter()
    staging.put(encoded)
    timings["stage"] += time.perf_counter() - t0
    return SlideOutcome(record, len(encoded.coords), None, dict(timings))

