"""A reader's view of an index: one version, read once from ``CURRENT`` and held with a shared lock on its
version file (so vacuum never deletes it underneath); never touches the writer's lock or staging."""

from __future__ import annotations

import fcntl
import json
import os
from functools import cached_property
from pathlib import Path

import numpy as np

from indexer.errors import IndexError_
from indexer.vectors.exact import dot_rows
from indexer.store.identity import IndexSettings
from indexer.store.layout import IndexPaths
from indexer.store.segments import SegmentFiles
from indexer.store.versions import Version, read_tombstones
from indexer.store.writer import read_identity

_ATTEMPTS = 5  # CURRENT may move (and vacuum delete the version it named) between two reads


def _still_named(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (vacuum unlinks a version only while no reader
    holds it, so once locked and still named, a version and its files stay)."""
    try:
        named, held = os.stat(path), os.fstat(fd)
    except FileNotFoundError:
        return False
    return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)


class Snapshot:
    """The files of one committed version of an index.

    Args:
        root: the index directory.

    Raises:
        IndexError_: no such directory, not an index, nothing committed yet, or a version 1 index.
    """

    _fd: int | None = None

    def __init__(self, root: str | Path):
        self.paths = IndexPaths(Path(root))
        root = self.paths.root
        if not root.is_dir():
            raise IndexError_(f"{root}: no such index directory")
        if self.paths.legacy_manifest.is_file():
            raise IndexError_(f"{root} is a version 1 index; convert it with `slidesearch migrate {root}` "
                              "(reuses the stored features, encodes nothing)")
        self.settings: IndexSettings | None = read_identity(self.paths)
        if self.settings is None:
            raise IndexError_(f"{root}: not a slidesearch index (no index.json); build one with `slidesearch index`")
        self.version = self._open_current()

    def _open_current(self) -> Version:
        for _ in range(_ATTEMPTS):
            if not self.paths.current.is_file():
                raise IndexError_(f"{self.paths.root}: no committed version yet (an `index` run is in progress "
                                  "or was interrupted; re-run it to finish)")
            name = self.paths.current.read_text().strip()
            try:
                fd = os.open(self.paths.versions / name, os.O_RDONLY)
            except FileNotFoundError:
                continue
            fcntl.flock(fd, fcntl.LOCK_SH)
            if not _still_named(fd, self.paths.versions / name):  # a vacuum deleted it before the lock held it
                os.close(fd)
                continue
            try:
                version = Version.from_json(json.loads(os.pread(fd, 1 << 26, 0).decode()))
            except (ValueError, TypeError) as exc:
                os.close(fd)
                raise IndexError_(f"{self.paths.root}: version file {name} is unreadable ({exc})") from None
            self._fd = fd
            return version
        raise IndexError_(f"{self.paths.root}: CURRENT keeps naming missing versions")

    def is_current(self) -> bool:
        """Whether this snapshot is still the live version."""
        try:
            return self.paths.current.read_text().strip() == f"v{self.version.number:06d}.json"
        except OSError:
            return False

    def close(self) -> None:
        """Release the version (vacuum may then delete its files once it is no longer live)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self) -> None:
        self.close()

    @cached_property
    def tombstones(self) -> np.ndarray:
        """Sorted removed slide_rows."""
        return read_tombstones(self.paths, self.version)

    def segment_dirs(self) -> list[Path]:
        return [self.paths.segment(s["id"]) for s in self.version.segments]

    def table_files(self, name: str) -> list[str]:
        """The ``<name>.parquet`` file of every live segment."""
        return [str(d / f"{name}.parquet") for d in self.segment_dirs()]

    @property
    def metadata_file(self) -> str | None:
        return None if self.version.metadata is None else str(self.paths.root / self.version.metadata)

    def faiss_parts(self, name: str) -> tuple[list[Path], list[int]]:
        """FAISS files of index ``name`` per segment (its own, or the codes a back-fill wrote for it under a later
        quantizer) and the first id each may hold."""
        k = int(self.settings.bank["K"])
        key = "patch_rows" if name == "patches" else "slide_rows"
        scale = k if name == "subvectors" else 1
        files = [self.paths.root / s["faiss"][name]["file"] if s["faiss"].get(name, {}).get("file")
                 else d / f"{name}.faiss" for s, d in zip(self.version.segments, self.segment_dirs())]
        return files, [int(s[key][0]) * scale for s in self.version.segments]

    def patch_features(self, slide_row: int, patch_row_start: int, n_patches: int) -> np.ndarray:
        """The float16 patch features (n_patches, d) of one live slide, read through the segment's memory map."""
        rows, offsets = self._row_index("patches")
        at = int(rows.searchsorted(patch_row_start))
        if at >= len(rows) or rows[at] != patch_row_start:
            raise IndexError_(f"slide_row {slide_row} is in no live segment of {self.paths.root}")
        i = int(offsets.searchsorted(at, side="right")) - 1
        return self._files[i].features[at - offsets[i]:at - offsets[i] + n_patches]

    def vectors(self, name: str, ids: np.ndarray) -> np.ndarray:
        """The exact stored vectors (len(ids), d) float32 of FAISS index ``name``'s ids, in the order given:
        patch rows from the float16 features, slide or sub-vector rows from the float32 files (read with pread).

        Raises:
            IndexError_: an id that no live segment holds.
        """
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.empty((len(ids), 0), np.float32)
        for rows, pos, where in self._located(name, ids):
            if out.shape[1] == 0:
                out = np.empty((len(ids), rows.shape[1]), np.float32)
            rows.take(pos, out, where)
        return out

    def scores(self, name: str, ids: np.ndarray, queries: np.ndarray) -> np.ndarray:
        """``queries @ vectors(name, ids).T`` (len(queries), len(ids)), without holding every vector at once."""
        ids = np.asarray(ids, np.int64).reshape(-1)
        out = np.empty((len(queries), len(ids)), np.float32)
        return dot_rows(self._located(name, ids), queries, out)  # one buffer and product across segments

    def _located(self, name: str, ids: np.ndarray):
        """Per live segment holding some of ``ids``: its row file, their positions in file order (reads go
        forward) and where each sits in ``ids``. One search over every segment's rows at once, so the number of
        segments costs a slice each, not a search each."""
        scale = int(self.settings.bank["K"]) if name == "subvectors" else 1
        rows, offsets = self._row_index(name)
        order = np.argsort(ids, kind="stable")
        ordered = ids[order]
        wanted = ordered // scale if scale > 1 else ordered
        at = rows.searchsorted(wanted)
        if len(ids) and (at[-1] >= len(rows) or (rows[np.minimum(at, len(rows) - 1)] != wanted).any()):
            raise IndexError_(f"{name} ids outside every live segment of {self.paths.root}")
        bounds = at.searchsorted(offsets)  # where each segment's rows begin among the sorted ids
        counts = np.diff(bounds)
        pos = at - np.repeat(offsets[:-1], counts)  # positions within each id's segment
        if scale > 1:
            pos = pos * scale + wanted % scale
        for i in np.flatnonzero(counts).tolist():
            lo, hi = bounds[i], bounds[i + 1]
            yield self._files[i].row_file(name), pos[lo:hi], order[lo:hi]

    def _row_index(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """The row ids of every live segment's rows of ``name`` (patch rows for ``patches``, else the slide rows
        with vectors), concatenated in segment order (increasing), and where each segment's begin (read once)."""
        key = "patches" if name == "patches" else "vectors"
        cache = self.__dict__.setdefault("_row_index_cache", {})
        if key not in cache:
            parts = [f.table("patches", ["patch_row"]).column("patch_row").to_numpy().astype(np.int64)
                     if key == "patches" else f.vector_rows() for f in self._files]
            cache[key] = (np.concatenate(parts) if parts else np.zeros(0, np.int64),
                          np.r_[0, np.cumsum([len(p) for p in parts])].astype(np.int64))
        return cache[key]

    @cached_property
    def _files(self) -> list[SegmentFiles]:
        """Read access to each live segment (row files and row ids read once each)."""
        return [SegmentFiles(folder) for folder in self.segment_dirs()]

    def manifest(self) -> dict:
        """Identity and version facts in one dict (what `slidesearch info` shows)."""
        indexes: dict[str, dict] = {}
        for segment in self.version.segments:
            for name, entry in segment["faiss"].items():
                agg = indexes.setdefault(name, {"kind": set(), "factory": set(), "count": 0, "dim": entry["dim"],
                                                "nbytes": 0, "recall_at_10": 1.0, "segments": 0})
                agg["kind"].add(entry["kind"])
                agg["factory"].add(entry["factory"])
                agg["count"] += entry["count"]
                agg["nbytes"] += entry["nbytes"]
                agg["segments"] += 1
                agg["recall_at_10"] = min(agg["recall_at_10"], entry["recall_at_10"])
                if "recall_at_10_reranked" in entry:
                    agg["recall_at_10_reranked"] = min(agg.get("recall_at_10_reranked", 1.0), entry["recall_at_10_reranked"])
                agg.setdefault("recall_queries", set()).add(entry.get("recall_queries", "self"))
        for name, agg in indexes.items():
            agg["kind"], agg["factory"] = "+".join(sorted(agg["kind"])), "+".join(sorted(agg["factory"]))
            agg["recall_queries"] = "+".join(sorted(agg["recall_queries"]))  # "held-out"; "self" for old segments
            agg["quantizer"] = self.version.quantizers.get(name)
        v = self.version
        return {**self.settings.to_json(), "version": v.number, "updated": v.created, "counts": v.counts,
                "segments": len(v.segments), "indexes": indexes, "timings": v.timings, "operation": v.operation,
                "devices": v.devices}
