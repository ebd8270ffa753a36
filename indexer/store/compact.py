"""Compaction: merge adjacent segments into one, dropping tombstoned rows (ids kept), an automatic
log-structured merge policy, and vacuum of files that neither the live version nor an open reader uses."""

from __future__ import annotations

import fcntl
import math
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np

from indexer.vectors.exact import release_pages
from indexer.aggregation.slide_features import RECORD_KEY, slide_spaces_of
from indexer.store import crash
from indexer.store.builder import SegmentBuilder
from indexer.store.layout import IndexPaths, segment_name
from indexer.store.quantizer import Quantizers
from indexer.store.segments import SegmentFiles, SlideRows
from indexer.store.versions import Version
from indexer.store.writer import IndexWriter, read_prototypes

MERGE_FACTOR = 10  # this many adjacent segments of one size tier are merged into one
MAX_AUTO_MERGE_PATCHES = 5_000_000  # automatic merges stop at this size (≈ 5 GB of 512-d float16 features)


def merge(writer: IndexWriter, segment_ids: list[str] | None = None, retrain: bool = False) -> Version:
    """Merge the adjacent live segments ``segment_ids`` (default: all) into one new segment and commit.

    Rows keep their ids; tombstoned rows are dropped. Its codes go under the live trained quantizers; with
    ``retrain`` (all segments only) new quantizers are trained from the merged segment and replace them.
    Memory is bounded: rows are streamed and memory-mapped pages released as they are copied.
    """
    version = writer.version
    ids = [s["id"] for s in version.segments]
    chosen = ids if segment_ids is None else list(segment_ids)
    if not chosen:
        return version
    first = ids.index(chosen[0])
    if ids[first:first + len(chosen)] != chosen:
        raise ValueError(f"segments {chosen} are not adjacent in {ids}")
    if retrain and chosen != ids:
        raise ValueError("retraining the quantizers needs every segment merged into one")
    dead = writer.tombstones
    sources = [SegmentFiles(writer.paths.segment(s)) for s in chosen]
    slides = [src.table("slides").to_pylist() for src in sources]
    live = [[r for r in recs if not _contains(dead, r["slide_row"])] for recs in slides]
    n_ok = sum(r["status"] == "ok" for recs in live for r in recs)
    n_patches = sum(int(r["n_patches"] or 0) for recs in live for r in recs if r["status"] == "ok")
    _, prototypes = read_prototypes(writer.paths)
    k, dim = prototypes.shape
    builder = SegmentBuilder(writer.paths.segment(segment_name(version.next_segment)), n_ok, n_patches, k, dim)
    for src, records in zip(sources, live):
        _copy_rows(builder, src, records, k)
        crash.point("compact.segment")
    others = replace(version, segments=tuple(s for s in version.segments if s["id"] not in chosen))
    quantizers = Quantizers(writer.paths, others, retrain=retrain, budget=writer.settings.max_index_memory)
    entry = builder.finish(writer.settings.max_index_memory, quantizers=quantizers)
    dropped = np.asarray([r["slide_row"] for recs in slides for r in recs if _contains(dead, r["slide_row"])], np.int64)
    crash.point("compact.commit")
    return writer.replace_segments(chosen, entry, dropped, quantizers=quantizers)


def _contains(sorted_rows: np.ndarray, row: int) -> bool:
    i = np.searchsorted(sorted_rows, row)
    return bool(i < len(sorted_rows) and sorted_rows[i] == row)


def _copy_rows(builder: SegmentBuilder, src: SegmentFiles, records: list[dict], k: int) -> None:
    """Add ``records`` of segment ``src`` to ``builder`` with their stored patches and exact vectors."""
    patches = src.table("patches")
    patch_rows = patches.column("patch_row").to_numpy()
    position = {int(r): i for i, r in enumerate(src.vector_rows())}
    mass = src.table("subvectors", ["mass"]).column("mass").to_numpy().reshape(-1, k)
    vectors = {name: src.vectors(name) for name in ("slides", "slides_mean", "subvectors")}
    for record in records:
        if record["status"] != "ok":
            builder.add(SlideRows(record))
            continue
        start = int(np.searchsorted(patch_rows, record["patch_row_start"]))
        part = patches.slice(start, int(record["n_patches"]))
        i = position[int(record["slide_row"])]
        record = {**record, RECORD_KEY: slide_spaces_of(src.folder, i)}  # imported slide-encoder vectors
        coords = np.stack([part.column("x").to_numpy(), part.column("y").to_numpy()], axis=1)
        builder.add(SlideRows(
            record, coords, src.features[start:start + len(part)], part.column("proto").to_numpy(),
            part.column("proto_sim").to_numpy(), vectors["slides"][i], vectors["slides_mean"][i],
            vectors["subvectors"][i * k:(i + 1) * k], mass[i],
        ))
        release_pages(src.features)  # a merge streams the sources: their pages never pile up in the RSS


def merge_candidates(segments: tuple[dict, ...], factor: int = MERGE_FACTOR,
                     max_patches: int = MAX_AUTO_MERGE_PATCHES) -> list[str] | None:
    """The first run of ``factor`` adjacent segments in one size tier (⌊log_factor(patches)⌋) holding at most
    ``max_patches`` patches together, or None.

    Larger segments are left to ``slidesearch compact``: segments under one trained quantizer are searched as
    one index already (their inverted lists are concatenated when loaded), so merging them on disk would
    re-encode millions of vectors for no faster query.

    >>> segs = tuple({"id": str(i), "patches": 50} for i in range(10)) + ({"id": "big", "patches": 10**6},)
    >>> merge_candidates(segs)
    ['0', '1', '2', '3', '4', '5', '6', '7', '8', '9']
    >>> merge_candidates(segs[1:]) is None
    True
    >>> merge_candidates(tuple({"id": str(i), "patches": 10**6} for i in range(10))) is None
    True
    """
    tiers = [int(math.log(max(s["patches"], 1), factor) + 1e-9) for s in segments]
    run = 1
    for i in range(1, len(segments) + 1):
        if i < len(segments) and tiers[i] == tiers[i - 1]:
            run += 1
            if run == factor and sum(s["patches"] for s in segments[i - factor + 1:i + 1]) <= max_patches:
                return [s["id"] for s in segments[i - factor + 1:i + 1]]
        else:
            run = 1
    return None


def auto_merge(writer: IndexWriter, factor: int = MERGE_FACTOR) -> int:
    """Merge while some tier holds ``factor`` adjacent segments; returns the number of merges."""
    merges = 0
    while (chosen := merge_candidates(writer.version.segments, factor)) is not None:
        merge(writer, chosen)
        merges += 1
    return merges


def vacuum(paths: IndexPaths, current: Version) -> dict[str, int]:
    """Delete version files no reader holds (readers hold a shared lock on theirs), and the segments,
    metadata and tombstones that only those versions named. The live version is always kept."""
    import json

    keep_versions, removed = {current.number}, {"versions": 0, "segments": 0, "files": 0}
    held: list[Version] = [current]
    for path in sorted(paths.versions.glob("v*.json")):
        number = int(path.stem[1:])
        if number == current.number:
            continue
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a reader has this version open
            held.append(Version.from_json(json.loads(path.read_text())))
            keep_versions.add(number)
            os.close(fd)
            continue
        crash.point("vacuum.version")
        path.unlink()
        os.close(fd)
        removed["versions"] += 1
    keep_segments = {s["id"] for v in held for s in v.segments}
    keep_files = {p for v in held for p in (v.metadata, v.tombstones, v.reports, *v.quantizers.values()) if p}
    keep_files |= {e["file"] for v in held for s in v.segments for e in s["faiss"].values() if e.get("file")}
    for seg in paths.segments.iterdir() if paths.segments.is_dir() else ():
        if seg.name not in keep_segments and not seg.name.startswith("."):
            crash.point("vacuum.segment")
            shutil.rmtree(seg)
            removed["segments"] += 1
    for folder in (paths.metadata, paths.tombstones, paths.reports, paths.quantizers, paths.codes):
        for file in folder.iterdir() if folder.is_dir() else ():
            if str(file.relative_to(paths.root)) not in keep_files and not file.name.startswith("."):
                shutil.rmtree(file) if file.is_dir() else file.unlink()
                removed["files"] += 1
    return removed


def compact(root: str | Path, wait: bool = False, retrain: bool = False) -> dict:
    """`slidesearch compact`: merge every segment into one (dropping tombstoned rows), then vacuum.

    ``retrain``: also train the quantizers anew from the merged segment (the only time they change)."""
    with IndexWriter(root, wait=wait) as writer:
        _require_index(writer)
        before = len(writer.version.segments)
        if before > 1 or writer.version.tombstones is not None or retrain:
            merge(writer, retrain=retrain)
        removed = vacuum(writer.paths, writer.version)
        return {"segments_before": before, "segments_after": len(writer.version.segments),
                "version": writer.version.number, "removed": removed, "counts": writer.version.counts,
                "quantizers": dict(writer.version.quantizers)}


def _require_index(writer: IndexWriter) -> None:
    from indexer.errors import IndexError_

    if writer.settings is None or writer.version.number == 0:
        raise IndexError_(f"{writer.paths.root}: not a slidesearch index (nothing committed); build one with "
                          "`slidesearch index`")
