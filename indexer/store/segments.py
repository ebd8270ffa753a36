"""Immutable segments: a batch of slides' tables, float16 patch features, exact vectors and FAISS indexes,
written in a hidden build folder and published by one folder rename."""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.aggregation.slide_features import RECORD_KEY, write_segment_spaces
from indexer.store import crash
from indexer.store.atomic import fsync_dir
from indexer.store.layout import FAISS_NAMES
from indexer.store.npyfile import NpyWriter

PATCH_BATCH = 65_536  # patch rows per Parquet row group (the batch a writer holds)
SLIDE_SCHEMA = pa.schema([
    ("slide_row", pa.int64()), ("slide_id", pa.string()), ("path", pa.string()), ("sha256", pa.string()),
    ("size_bytes", pa.int64()), ("mtime_ns", pa.int64()), ("vendor", pa.string()), ("width", pa.int64()),
    ("height", pa.int64()), ("mpp", pa.float64()), ("mpp_source", pa.string()), ("magnification", pa.float64()),
    ("n_patches", pa.int64()), ("patch_row_start", pa.int64()), ("patch_size", pa.int64()),
    ("status", pa.string()), ("error", pa.string()), ("entropy", pa.float64()), ("max_mass", pa.float64()),
    ("fingerprint", pa.string()), ("stain_detected", pa.string()), ("stain_eosin_share", pa.float64()),
])
PATCH_SCHEMA = pa.schema([
    ("patch_row", pa.int64()), ("slide_row", pa.int64()), ("x", pa.int64()), ("y", pa.int64()),
    ("size", pa.int64()), ("proto", pa.int32()), ("proto_sim", pa.float32()),
])
SUB_SCHEMA = pa.schema([("sub_row", pa.int64()), ("slide_row", pa.int64()), ("proto_id", pa.int32()),
                        ("mass", pa.float32())])
VECTOR_FILES = {"slides": "slides.npy", "slides_mean": "slides_mean.npy", "subvectors": "subvectors.npy"}


@dataclass
class SlideRows:
    """What one slide contributes to a segment; rows (slide_row, patch_row_start) are assigned by the caller.

    For an ok slide: patch coords, float16 features, each patch's prototype and similarity, and the slide's
    vectors (slide (K·d), mean (d), sub-vectors (K×d) and masses (K)).
    """

    record: dict[str, Any]
    coords: np.ndarray | None = None
    features: np.ndarray | None = None
    patch_proto: np.ndarray | None = None
    patch_proto_sim: np.ndarray | None = None
    slide_vector: np.ndarray | None = None
    mean_vector: np.ndarray | None = None
    subvectors: np.ndarray | None = None
    mass: np.ndarray | None = None


class SegmentBuilder:
    """Writes one segment slide by slide: memory is one slide plus one Parquet batch (and, at ``finish``, the
    FAISS index being built).

    Args:
        final: the segment folder to publish (``segments/<id>``); work happens in ``segments/.build-<id>``.
        n_ok: ok slides it will hold. n_patches: their patches. k, dim: prototypes and embedding size.
    """

    def __init__(self, final: Path, n_ok: int, n_patches: int, k: int, dim: int):
        self.final, self.k, self.dim = Path(final), k, dim
        self.build = self.final.parent / f".build-{self.final.name}"
        shutil.rmtree(self.build, ignore_errors=True)
        self.build.mkdir(parents=True)
        crash.point("segment.start")
        self.features = NpyWriter(self.build / "features.npy", np.float16, (n_patches, dim))  # never a memory map:
        self.vectors = {  # a full disk is an OSError here or at a write, never a SIGBUS
            "slides": NpyWriter(self.build / VECTOR_FILES["slides"], np.float32, (n_ok, k * dim)),
            "slides_mean": NpyWriter(self.build / VECTOR_FILES["slides_mean"], np.float32, (n_ok, dim)),
            "subvectors": NpyWriter(self.build / VECTOR_FILES["subvectors"], np.float32, (n_ok * k, dim)),
        }
        self.records: list[dict[str, Any]] = []
        self.ok_rows: list[int] = []
        self.masses: list[np.ndarray] = []
        self.spaces: list[dict[str, np.ndarray]] = []  # per ok slide: imported slide-encoder vectors
        self._patch_parts: list[pa.Table] = []
        self._patch_buffered = 0
        self._patch_writer = pq.ParquetWriter(self.build / "patches.parquet", PATCH_SCHEMA)
        self._patches = 0
        self.timings: dict[str, float] = {"tables": 0.0, "faiss": 0.0}

    def add(self, slide: SlideRows) -> None:
        """Append one slide (ok or failed) in slide_row order."""
        record = slide.record
        self.records.append(record)
        if record.get("status") != "ok":
            return
        n, start, row = len(slide.coords), self._patches, len(self.ok_rows)
        self.features.write(start, slide.features)
        self.vectors["slides"].write(row, slide.slide_vector)
        self.vectors["slides_mean"].write(row, slide.mean_vector)
        self.vectors["subvectors"].write(row * self.k, slide.subvectors)
        self.ok_rows.append(int(record["slide_row"]))
        self.masses.append(np.asarray(slide.mass, np.float32))
        self.spaces.append({k: np.asarray(v, np.float32) for k, v in (record.pop(RECORD_KEY, None) or {}).items()})
        first = int(record["patch_row_start"])
        self._patch_parts.append(pa.table({
            "patch_row": np.arange(first, first + n, dtype=np.int64),
            "slide_row": np.full(n, record["slide_row"], np.int64),
            "x": slide.coords[:, 0].astype(np.int64), "y": slide.coords[:, 1].astype(np.int64),
            "size": np.full(n, record["patch_size"], np.int64),
            "proto": np.asarray(slide.patch_proto, np.int32), "proto_sim": np.asarray(slide.patch_proto_sim, np.float32),
        }, schema=PATCH_SCHEMA))
        self._patches += n
        self._patch_buffered += n
        if self._patch_buffered >= PATCH_BATCH:
            self._flush_patches()
        crash.point("segment.slide")

    def _flush_patches(self) -> None:
        if self._patch_parts:
            self._patch_writer.write_table(pa.concat_tables(self._patch_parts))
        self._patch_parts, self._patch_buffered = [], 0

    def finish(self, max_index_memory: int | None, faiss_kind: str | None = None, quantizers=None) -> dict[str, Any]:
        """Write the tables and FAISS indexes, fsync, and publish the folder; returns the segment's entry.

        ``faiss_kind`` forces one FAISS kind (None: :func:`indexer.vectors.choose_index` decides, or the
        trained-once quantizer of :class:`indexer.store.quantizer.Quantizers` ``quantizers`` once there is one)."""
        import time

        from indexer import vectors as vi

        t0 = time.perf_counter()
        self._flush_patches()
        self._patch_writer.close()
        crash.point("segment.patches")
        rows = np.asarray(self.ok_rows, np.int64)
        pq.write_table(pa.Table.from_pylist([{c: r.get(c) for c in SLIDE_SCHEMA.names} for r in self.records],
                                            schema=SLIDE_SCHEMA), self.build / "slides.parquet")
        crash.point("segment.slides")
        sub_rows = (rows[:, None] * self.k + np.arange(self.k)).ravel()
        pq.write_table(pa.table({
            "sub_row": sub_rows, "slide_row": np.repeat(rows, self.k),
            "proto_id": np.tile(np.arange(self.k, dtype=np.int32), len(rows)),
            "mass": np.concatenate(self.masses) if self.masses else np.zeros(0, np.float32),
        }, schema=SUB_SCHEMA), self.build / "subvectors.parquet")
        np.save(self.build / "vector_rows.npy", rows)
        write_segment_spaces(self.build, self.spaces)
        for array in (self.features, *self.vectors.values()):
            array.close()
        del self.features, self.vectors
        crash.point("segment.vectors")
        self.timings["tables"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        seg = SegmentFiles(self.build)
        patch_ids = seg.patch_rows()
        faiss_entries = {}
        for name in FAISS_NAMES:
            faiss_entries[name] = write_faiss(vi, seg.array(name), seg.faiss_ids(name), self.build / f"{name}.faiss",
                                              max_index_memory, faiss_kind, quantizers, name, self.final.name)
            crash.point(f"segment.faiss.{name}")
        self.timings["faiss"] += time.perf_counter() - t0
        for path in self.build.iterdir():
            with open(path, "rb+") as fh:
                os.fsync(fh.fileno())
        fsync_dir(self.build)
        crash.point("segment.publish")
        os.replace(self.build, self.final)
        fsync_dir(self.final.parent)
        crash.point("segment.published")
        slide_rows = [int(r["slide_row"]) for r in self.records]
        return {
            "id": self.final.name,
            "slide_rows": [min(slide_rows, default=0), max(slide_rows, default=-1) + 1],
            "patch_rows": [int(patch_ids.min()) if len(patch_ids) else 0,
                           int(patch_ids.max()) + 1 if len(patch_ids) else 0],
            "slides": len(self.records), "slides_ok": len(rows), "patches": int(self._patches),
            "faiss": faiss_entries,
        }


def write_faiss(vi, vectors: np.ndarray, ids: np.ndarray, path: Path, budget: int | None,
                kind: str | None = None, quantizers=None, name: str = "", segment_id: str = "",
                shared: tuple | None = None) -> dict[str, Any]:
    """Build, check and save one FAISS index; returns its entry for the version file.

    The index is the shared quantizer's (codes only, under ``quantizers``' file) once the collection has one or
    outgrows exact search; otherwise ``kind``, or what ``choose_index`` picks. ``shared``: ``(quantizer,
    relative path)`` to encode under, whatever the collection's size (a back-fill). Recall@10 is measured on
    held-out queries (``recall_at_10``), and for compressed indexes also after the exact re-rank.
    """
    from indexer.store.quantizer import describe, kind_of, save_codes
    from indexer.vectors.exact import row_gather
    from indexer.store.rerank import RerankedIndex

    n, dim = vectors.shape
    if shared is None and not (kind or quantizers is None or n == 0):
        shared = quantizers.for_segment(name, segment_id, vectors)
    if shared is not None:
        index = vi.add_to_trained(shared[0], vectors, ids, quantizers.use_gpu)
        entry = {"kind": kind_of(index), "factory": describe(index), "quantizer": shared[1]}
    else:
        choice = vi.choice_for_kind(kind, n, dim) if kind else vi.choose_index(n, dim, budget)
        index = vi.build_index(vectors, ids, choice)
        entry = {"kind": choice.kind, "factory": choice.describe()}
    measured = {"recall_at_10": 1.0}
    if entry["kind"] != "flat" and n:
        candidates = {"recall_at_10": index}
        if entry["kind"] == "ivf_pq":
            candidates["recall_at_10_reranked"] = RerankedIndex(index, row_gather(vectors, ids))
        measured = vi.measure_recalls(candidates, vectors, ids, k=10)
    (save_codes if shared is not None else vi.save_index)(index, path)
    return {**entry, "count": int(n), "dim": int(dim), **{k: float(v) for k, v in measured.items()},
            "recall_queries": "held-out", "nbytes": int(path.stat().st_size)}


class SegmentFiles:
    """Read access to one segment folder (tables through pyarrow, arrays as read-only memory maps)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def table(self, name: str, columns: list[str] | None = None) -> pa.Table:
        return pq.read_table(self.folder / f"{name}.parquet", columns=columns)

    def array(self, name: str) -> np.ndarray:
        """The exact vectors FAISS index ``name`` holds, in row order (patches: the float16 features)."""
        return self.features if name == "patches" else self.vectors(name)

    @cached_property
    def features(self) -> np.ndarray:
        """(patches, d) float16 in patch_row order."""
        return np.load(self.folder / "features.npy", mmap_mode="r")

    def vectors(self, name: str) -> np.ndarray:
        """Exact float32 vectors of ``slides``, ``slides_mean`` or ``subvectors``, in vector_rows order."""
        return np.load(self.folder / VECTOR_FILES[name], mmap_mode="r")

    def row_file(self, name: str):
        """The vectors of FAISS index ``name`` as a :class:`indexer.vectors.exact.RowFile` (read once per folder)."""
        from indexer.vectors.exact import RowFile

        files = self.__dict__.setdefault("_row_files", {})
        if name not in files:
            files[name] = RowFile(self.folder / ("features.npy" if name == "patches" else VECTOR_FILES[name]))
        return files[name]

    def vector_rows(self) -> np.ndarray:
        """slide_row of each ok slide, in vector order (read once)."""
        if "_vector_rows" not in self.__dict__:
            self._vector_rows = np.load(self.folder / "vector_rows.npy")
        return self._vector_rows

    def patch_rows(self) -> np.ndarray:
        """patch_row of each features row (read once)."""
        if "_patch_rows" not in self.__dict__:
            self._patch_rows = self.table("patches", ["patch_row"]).column("patch_row").to_numpy().astype(np.int64)
        return self._patch_rows

    def faiss_ids(self, name: str) -> np.ndarray:
        """The FAISS ids of FAISS index ``name``'s vectors, in row order: patch rows, slide rows, or
        ``slide_row·K + proto_id`` for sub-vectors."""
        if name == "patches":
            return self.patch_rows()
        rows = self.vector_rows()
        if name != "subvectors":
            return rows
        k = len(self.vectors(name)) // max(len(rows), 1)
        return (rows[:, None] * k + np.arange(k)).ravel()
