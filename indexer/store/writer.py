"""The one writer of an index: holds ``LOCK``, recovers from a killed predecessor, and commits versions
(new segments, tombstones, metadata) whose cost is O(what changed)."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import sys
import time
from dataclasses import replace
from functools import cached_property
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.aggregation.aggregate import AggregationConfig, aggregate_slide
from indexer.errors import IndexError_, UserError
from indexer.vectors.device import faiss_label
from indexer.store import crash
from indexer.store.atomic import atomic_path, atomic_write_bytes, remove_temporaries
from indexer.store.backfill import backfill
from indexer.store.builder import SegmentBuilder
from indexer.store.identity import IndexSettings
from indexer.store.layout import IndexPaths, segment_name
from indexer.store.lock import WriterLock
from indexer.store.metadata import merge_metadata, read_metadata, write_metadata
from indexer.store.quantizer import Quantizers
from indexer.store.segments import SegmentFiles, SlideRows
from indexer.store.staging import Staging
from indexer.store.versions import Version, commit, read_current, read_tombstones, write_tombstones

_NUMBERED = re.compile(r"^[vs](\d{6})")


def read_identity(paths: IndexPaths) -> IndexSettings | None:
    """The settings in ``index.json`` (None when absent)."""
    if not paths.identity.is_file():
        return None
    try:
        return IndexSettings.from_json(json.loads(paths.identity.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise IndexError_(f"{paths.identity}: unreadable index identity ({exc})") from None


def remove_unpublished(paths: IndexPaths) -> Version:
    """Delete what no committed version names: temporaries and build folders, version, metadata, tombstone, report
    and codes files newer than the live version, segments and quantizers of numbers it has not handed out yet.
    Staged slides stay (a re-run resumes from them). Returns the live version."""
    remove_temporaries(*paths.folders())
    version = read_current(paths) or Version()
    for folder in (paths.versions, paths.metadata, paths.tombstones, paths.reports, paths.codes):
        for path in folder.glob("v*") if folder.is_dir() else ():
            match = _NUMBERED.match(path.name)
            if match and int(match[1]) > version.number:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    for folder in (paths.segments, paths.quantizers):  # quantizers/<segment id>-<name>.faiss
        for path in folder.iterdir() if folder.is_dir() else ():
            match = _NUMBERED.match(path.name)
            if match and path.name.startswith("s") and int(match[1]) >= version.next_segment:
                shutil.rmtree(path) if path.is_dir() else path.unlink()
    return version


def read_prototypes(paths: IndexPaths) -> tuple[pa.Table, np.ndarray]:
    """prototypes.parquet and its embedding column P (K, d)."""
    table = pq.read_table(paths.prototypes)
    return table, np.asarray(table.column("embedding").to_pylist(), np.float32)


class IndexWriter:
    """Exclusive write access to one index directory (a context manager).

    Entering takes the writer lock (``wait``: block until free), removes what a killed writer left
    (temporaries, unpublished segments and versions), and reads the live version.

    Args:
        root: the index directory.
        wait: wait for another writer instead of refusing.
        create: create the directory when missing (else a missing or non-index directory is refused).
    """

    def __init__(self, root: str | Path, wait: bool = False, create: bool = False, legacy_ok: bool = False):
        self.paths = IndexPaths(Path(root))
        self.create, self.legacy_ok = create, legacy_ok
        self._lock = WriterLock(self.paths.lock, wait)
        self.staging = Staging(self.paths.staging)
        self.version = Version()
        self.settings: IndexSettings | None = None

    def __enter__(self) -> "IndexWriter":
        if self.paths.legacy_manifest.is_file() and not self.legacy_ok:
            raise IndexError_(f"{self.paths.root} is a version 1 index; convert it first with "
                              f"`slidesearch migrate {self.paths.root}`")
        if not (self.create or self.legacy_ok) and not self.paths.identity.is_file():
            what = "not a slidesearch index (no index.json)" if self.paths.root.is_dir() else "no such index directory"
            raise IndexError_(f"{self.paths.root}: {what}")
        try:
            self.paths.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise IndexError_(f"cannot create index directory {self.paths.root}: {exc.strerror}") from None
        self._lock.acquire()
        try:
            self._recover()
        except BaseException:
            self._lock.release()
            raise
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            if exc_type is not None:  # a failed write (a full disk, an interrupt): nothing unpublished stays
                try:
                    remove_unpublished(self.paths)
                except OSError:
                    pass
        finally:
            self._lock.release()

    # -- recovery -------------------------------------------------------------------------------------
    def _recover(self) -> None:
        """Delete what no committed version names (:func:`remove_unpublished`) and staged slides already committed."""
        self.version = remove_unpublished(self.paths)
        self.settings = read_identity(self.paths)
        for slide_id in list(self.staging.slide_ids()):  # committed before a kill stopped the clean-up
            live, staged = self.live_slides.get(slide_id), self.staging.get(slide_id, with_features=False)
            if live is not None and staged is not None and all(
                    live.get(k) == staged.record.get(k) for k in ("sha256", "fingerprint", "n_patches")):
                self.staging.remove(slide_id)

    # -- identity and prototypes ------------------------------------------------------------------------
    def set_identity(self, settings: IndexSettings) -> IndexSettings:
        """Fix the index's settings on creation, or check a run's settings against them.

        Before the first commit nothing is lost by changing them, so a run with other settings replaces
        them (and says so); after it, a run with other settings is refused.
        """
        existing = self.settings
        if existing is not None:
            try:
                existing.check_same(settings, str(self.paths.root))
                return existing
            except IndexError_ as exc:
                if self.version.number > 0:
                    raise
                print(f"note: {self.paths.root} has no committed version yet; replacing its settings ({exc})",
                      file=sys.stderr)
        self.settings = settings.stamped()
        self._write_identity()
        return self.settings

    def _write_identity(self) -> None:
        atomic_write_bytes(self.paths.identity, (json.dumps(self.settings.to_json(), indent=2) + "\n").encode())

    def fix_prototypes(self, table: pa.Table, prototypes: np.ndarray) -> np.ndarray:
        """Write prototypes.parquet (P) before the first commit; afterwards P is fixed and the stored one is returned."""
        if self.version.number > 0 and self.paths.prototypes.is_file():
            return read_prototypes(self.paths)[1]
        column = pa.FixedSizeListArray.from_arrays(pa.array(prototypes.astype(np.float32).ravel()), prototypes.shape[1])
        table = table.drop_columns(["embedding"]) if "embedding" in table.column_names else table
        with atomic_path(self.paths.prototypes) as tmp:
            pq.write_table(table.append_column("embedding", column), tmp)
        digest = hashlib.sha256(np.ascontiguousarray(prototypes, np.float32).tobytes()).hexdigest()
        self.settings = replace(self.settings, prototypes_sha256=digest)
        self._write_identity()
        return prototypes.astype(np.float32)

    # -- the live state ---------------------------------------------------------------------------------
    @cached_property
    def tombstones(self) -> np.ndarray:
        return read_tombstones(self.paths, self.version)

    @cached_property
    def live_slides(self) -> dict[str, dict[str, Any]]:
        """slide_id → the committed record of every live slide (ok or failed)."""
        out: dict[str, dict[str, Any]] = {}
        dead = set(self.tombstones.tolist())
        for segment in self.version.segments:
            for record in SegmentFiles(self.paths.segment(segment["id"])).table("slides").to_pylist():
                if record["slide_row"] not in dead:
                    out[record["slide_id"]] = record
        return out

    @cached_property
    def metadata(self) -> pa.Table | None:
        """The live user metadata table."""
        return read_metadata(self.paths, self.version.metadata)

    def _publish(self, version: Version) -> Version:
        commit(self.paths, version)
        self.version = version
        for name in ("tombstones", "live_slides", "metadata"):
            self.__dict__.pop(name, None)
        return version

    # -- writes -----------------------------------------------------------------------------------------
    def commit_slides(self, ok_ids: Iterable[str], failed: Iterable[dict[str, Any]], replaced: Iterable[str],
                      prototypes: np.ndarray, timings: dict[str, float] | None = None,
                      devices: dict[str, str] | None = None) -> Version:
        """One new segment from staged slides ``ok_ids`` and failure records, tombstoning the live slides
        ``replaced``; aggregates only the new slides, then commits and clears their staging (``devices``: where
        the run's encoder ran, recorded in the version)."""
        ok_ids = list(ok_ids)
        records = [self.staging.get(s, with_features=False).record for s in ok_ids] + [dict(r) for r in failed]
        config, spent = self.settings.aggregation, {"aggregate": 0.0}

        def rows_of(record: dict[str, Any]) -> SlideRows:
            t0 = time.perf_counter()
            rows = self._aggregated(record, prototypes, config)
            spent["aggregate"] += time.perf_counter() - t0
            return rows

        new = self.append_segment(records, rows_of, prototypes.shape, replaced, timings=timings, extra=spent,
                                  devices=devices)
        for slide_id in ok_ids:
            crash.point("cleanup.staging")
            self.staging.remove(slide_id)
        return new

    def append_segment(self, records: list[dict[str, Any]], rows_of: Callable[[dict[str, Any]], SlideRows],
                       shape: tuple[int, int], replaced: Iterable[str] = (), operation: str = "index",
                       timings: dict[str, float] | None = None, extra: dict[str, float] | None = None,
                       faiss_kind: str | None = None, devices: dict[str, str] | None = None) -> Version:
        """Assign ids to ``records`` (in slide_id order), write them as one new segment and commit it.

        Args:
            records: slide records; an ok one carries ``n_patches``, and ``rows_of(record)`` gives its rows.
            shape: (K, d) of the prototypes.
            replaced: live slide ids this commit tombstones.
            faiss_kind: force one FAISS kind for the segment (benchmarks); None: ``choose_index``.
            devices: where the encoder ran; the version records it with where FAISS built the segment.
        """
        t0 = time.perf_counter()
        version = self.version
        records = sorted(records, key=lambda r: r["slide_id"])
        if not records:
            return version
        next_slide, next_patch = version.next_slide_row, version.next_patch_row
        for record in records:
            record["slide_row"], next_slide = next_slide, next_slide + 1
            if record.get("status") == "ok":
                record["patch_row_start"], next_patch = next_patch, next_patch + int(record["n_patches"])
            else:
                record.update(patch_row_start=None, n_patches=0)
        n_ok = sum(r.get("status") == "ok" for r in records)
        builder = SegmentBuilder(self.paths.segment(segment_name(version.next_segment)), n_ok,
                                 next_patch - version.next_patch_row, *shape)
        for record in records:
            builder.add(rows_of(record) if record.get("status") == "ok" else SlideRows(record))
        quantizers = Quantizers(self.paths, version)
        entry = builder.finish(self.settings.max_index_memory, faiss_kind, quantizers)
        t1 = time.perf_counter()
        older = backfill(self.paths, version.number + 1, version.segments, quantizers)
        builder.timings["backfill"] = time.perf_counter() - t1
        stages = {**(timings or {}), **(extra or {}), **builder.timings, "commit": time.perf_counter() - t0}
        dead_rows = [self.live_slides[s]["slide_row"] for s in replaced if s in self.live_slides]
        new = version.successor(
            segments=older + (entry,), next_slide_row=next_slide, next_patch_row=next_patch,
            next_segment=version.next_segment + 1, operation=operation,
            timings={k: round(v, 3) for k, v in stages.items()}, quantizers=quantizers.table,
            devices={**(devices or {}), "faiss": faiss_label()},
        )
        return self._publish(self._with_tombstones(new, dead_rows, added=entry))

    def _aggregated(self, record: dict[str, Any], prototypes: np.ndarray, config: AggregationConfig) -> SlideRows:
        staged = self.staging.get(record["slide_id"])
        emb = aggregate_slide(staged.features.astype(np.float32), prototypes, config)
        record.update(entropy=float(emb.entropy), max_mass=float(emb.max_mass))
        return SlideRows(record, staged.coords, staged.features, emb.patch_proto, emb.patch_proto_sim,
                         emb.slide_vector, emb.mean_vector, emb.subvectors, emb.mass)

    def _with_tombstones(self, new: Version, dead_rows: list[int], added: dict[str, Any] | None = None) -> Version:
        """``new`` with ``dead_rows`` tombstoned and its counts updated."""
        counts = dict(new.counts)
        if added is not None:
            counts["slides"] += added["slides"]
            counts["slides_ok"] += added["slides_ok"]
            counts["slides_failed"] += added["slides"] - added["slides_ok"]
            counts["patches"] += added["patches"]
        by_row = {r["slide_row"]: r for r in self.live_slides.values()}
        for row in dead_rows:
            record = by_row[row]
            ok = record["status"] == "ok"
            counts["slides"] -= 1
            counts["slides_ok" if ok else "slides_failed"] -= 1
            counts["patches"] -= int(record["n_patches"] or 0) if ok else 0
        rows = np.union1d(self.tombstones, np.asarray(dead_rows, np.int64))
        counts["tombstoned"] = int(len(rows))
        path = write_tombstones(self.paths, new.number, rows) if len(dead_rows) else new.tombstones
        return replace(new, tombstones=path, counts=counts)

    def remove(self, slide_ids: Iterable[str]) -> Version:
        """Tombstone live slides (their rows vanish from every query at once); unknown ids are refused."""
        slide_ids = list(dict.fromkeys(slide_ids))
        missing = [s for s in slide_ids if s not in self.live_slides]
        if missing:
            shown = ", ".join(repr(s[:80]) for s in missing[:5])
            raise UserError(f"not in {self.paths.root}: {shown}" + (f" and {len(missing) - 5} more" if len(missing) > 5 else ""))
        for slide_id in slide_ids:
            self.staging.remove(slide_id)
        new = self._with_tombstones(self.version.successor(operation="remove", timings={}),
                                    [self.live_slides[s]["slide_row"] for s in slide_ids])
        return self._publish(new)

    def update_metadata(self, table: pa.Table | None,
                        reports: Callable[[pa.Table | None, int], str | None] | None = None) -> Version:
        """Merge a metadata table (``slide_id`` + columns; None: none) into the stored one and commit it.

        ``reports(merged, number)``, when given, writes the report tables derived from the merged metadata
        for the new version and returns their folder (``indexer/reports/commit.py``), committed with it.
        """
        merged = self.metadata if table is None else merge_metadata(self.metadata, table)
        new = self.version.successor(operation="metadata", timings={})
        if table is not None:
            new = replace(new, metadata=write_metadata(self.paths, new.number, merged))
        if reports is not None:
            new = replace(new, reports=reports(merged, new.number))
        return self._publish(new)

    def replace_segments(self, old_ids: list[str], entry: dict[str, Any], dropped_rows: np.ndarray,
                         operation: str = "compact", quantizers: Quantizers | None = None) -> Version:
        """Commit a merged segment in place of the adjacent segments ``old_ids`` whose tombstoned rows it dropped
        (``quantizers``: the merge's, whose table is the version's quantizers from now on and whose newly trained
        ones the other segments are back-filled under; None keeps the version's)."""
        segments = list(self.version.segments)
        ids = [s["id"] for s in segments]
        first = ids.index(old_ids[0])
        segments[first:first + len(old_ids)] = [entry]
        number = self.version.number + 1
        if quantizers is not None:
            segments = list(backfill(self.paths, number, tuple(segments), quantizers))
        rows = np.setdiff1d(self.tombstones, dropped_rows)
        new = self.version.successor(segments=tuple(segments), next_segment=self.version.next_segment + 1,
                                     operation=operation, timings={}, devices={"faiss": faiss_label()},
                                     quantizers=self.version.quantizers if quantizers is None else quantizers.table)
        counts = {**new.counts, "tombstoned": int(len(rows))}
        tomb = write_tombstones(self.paths, new.number, rows) if len(rows) else None
        return self._publish(replace(new, tombstones=tomb, counts=counts))
