"""Versions: immutable snapshots naming their live segments, tombstones and metadata; ``CURRENT`` names the
live one, and replacing it is the commit point."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

import numpy as np

from indexer.errors import IndexError_
from indexer.store import crash
from indexer.store.atomic import atomic_path, atomic_write_bytes
from indexer.store.layout import IndexPaths, version_name


@dataclass(frozen=True)
class Version:
    """One snapshot of an index.

    Attributes:
        number: version number (1, 2, …; 0 is the empty index before the first commit).
        segments: live segments in row order, each a dict: id, slide_rows [lo, hi), patch_rows [lo, hi),
            slides, slides_ok, patches, faiss (per FAISS file: kind, factory, count, dim, recall, nbytes).
        tombstones: relative path of the removed slide_rows of live segments (None: none removed).
        metadata: relative path of the user metadata table (None: no metadata).
        reports: relative path of the report tables folder derived from the metadata (None: no reports).
        next_slide_row, next_patch_row, next_segment: the next ids to hand out (never reused).
        counts: live slides, slides_ok, slides_failed, patches, tombstoned.
        operation: what made this version (index, remove, metadata, compact, migrate).
        timings: seconds per stage of the run that made it.
        devices: where that run's encoder and FAISS builds ran (e.g. ``{"encoder": "cpu, fp32", "faiss": "cpu"}``).
        created: commit time (ISO 8601, UTC).
        quantizers: FAISS index name → relative path of its trained-once quantizer (``quantizers/…``), which
            the segments' entries naming it store their codes under.
    """

    number: int = 0
    segments: tuple[dict[str, Any], ...] = ()
    tombstones: str | None = None
    metadata: str | None = None
    reports: str | None = None
    next_slide_row: int = 0
    next_patch_row: int = 0
    next_segment: int = 1
    counts: dict[str, int] = field(default_factory=lambda: {"slides": 0, "slides_ok": 0, "slides_failed": 0,
                                                              "patches": 0, "tombstoned": 0})
    operation: str = ""
    timings: dict[str, float] = field(default_factory=dict)
    created: str = ""
    quantizers: dict[str, str] = field(default_factory=dict)
    devices: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "segments": list(self.segments)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Version":
        return cls(**{**data, "segments": tuple(data["segments"])})

    def successor(self, **changes: Any) -> "Version":
        """The next version, with ``changes`` applied and a new creation time (devices only when given)."""
        return replace(self, number=self.number + 1, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
                       **{"devices": {}, **changes})


def read_current(paths: IndexPaths) -> Version | None:
    """The live version (reads ``CURRENT`` once), or None before the first commit."""
    if not paths.current.is_file():
        return None
    name = paths.current.read_text().strip()
    try:
        return Version.from_json(json.loads((paths.versions / name).read_text()))
    except (OSError, ValueError, TypeError) as exc:
        raise IndexError_(f"{paths.root}: CURRENT names {name!r}, which cannot be read ({exc})") from None


def commit(paths: IndexPaths, version: Version) -> None:
    """Write the version file, then replace ``CURRENT`` (the single atomic step that publishes it)."""
    crash.point("commit.version")
    atomic_write_bytes(paths.version(version.number), (json.dumps(version.to_json(), indent=1) + "\n").encode())
    crash.point("commit.current")
    atomic_write_bytes(paths.current, (version_name(version.number) + "\n").encode())
    crash.point("commit.done")


def read_tombstones(paths: IndexPaths, version: Version) -> np.ndarray:
    """Sorted removed slide_rows of ``version``."""
    if version.tombstones is None:
        return np.zeros(0, np.int64)
    import pyarrow.parquet as pq

    return np.sort(pq.read_table(paths.root / version.tombstones).column("slide_row").to_numpy()).astype(np.int64)


def write_tombstones(paths: IndexPaths, number: int, rows: np.ndarray) -> str | None:
    """Write the removed slide_rows for version ``number``; returns the relative path (None when empty)."""
    if len(rows) == 0:
        return None
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = paths.tombstones / f"v{number:06d}.parquet"
    crash.point("tombstones.write")
    with atomic_path(path) as tmp:
        pq.write_table(pa.table({"slide_row": np.unique(np.asarray(rows, np.int64))}), tmp)
    return str(path.relative_to(paths.root))
