"""Writing segments: :class:`SegmentBuilder` writes one in a hidden build folder and publishes it by one folder
rename; :func:`write_faiss` builds, checks and saves one of its FAISS indexes."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.vectors.exact import row_gather
from indexer.aggregation.slide_features import RECORD_KEY, write_segment_spaces
from indexer.store import crash
from indexer.store.atomic import fsync_dir
from indexer.store.layout import FAISS_NAMES
from indexer.store.npyfile import NpyWriter
from indexer.store.quantizer import describe, kind_of, save_codes
from indexer.store.rerank import RerankedIndex
from indexer.store.segments import PATCH_SCHEMA, SLIDE_SCHEMA, SUB_SCHEMA, VECTOR_FILES, SegmentFiles, SlideRows
from indexer.vectors import (add_to_trained, build_index, choice_for_kind, choose_index, measure_recalls,
                                  save_index)

PATCH_BATCH = 65_536  # patch rows per Parquet row group (the batch a writer holds)


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
            faiss_entries[name] = write_faiss(seg.array(name), seg.faiss_ids(name), self.build / f"{name}.faiss",
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


def write_faiss(vectors: np.ndarray, ids: np.ndarray, path: Path, budget: int | None,
                kind: str | None = None, quantizers=None, name: str = "", segment_id: str = "",
                shared: tuple | None = None) -> dict[str, Any]:
    """Build, check and save one FAISS index; returns its entry for the version file.

    The index is the shared quantizer's (codes only, under ``quantizers``' file) once the collection has one or
    outgrows exact search; otherwise ``kind``, or what ``choose_index`` picks. ``shared``: ``(quantizer,
    relative path)`` to encode under, whatever the collection's size (a back-fill). Recall@10 is measured on
    held-out queries (``recall_at_10``), and for compressed indexes also after the exact re-rank.
    """
    n, dim = vectors.shape
    if shared is None and not (kind or quantizers is None or n == 0):
        shared = quantizers.for_segment(name, segment_id, vectors)
    if shared is not None:
        index = add_to_trained(shared[0], vectors, ids, quantizers.use_gpu)
        entry = {"kind": kind_of(index), "factory": describe(index), "quantizer": shared[1]}
    else:
        choice = choice_for_kind(kind, n, dim) if kind else choose_index(n, dim, budget)
        index = build_index(vectors, ids, choice)
        entry = {"kind": choice.kind, "factory": choice.describe()}
    measured = {"recall_at_10": 1.0}
    if entry["kind"] != "flat" and n:
        candidates = {"recall_at_10": index}
        if entry["kind"] == "ivf_pq":
            candidates["recall_at_10_reranked"] = RerankedIndex(index, row_gather(vectors, ids))
        measured = measure_recalls(candidates, vectors, ids, k=10)
    (save_codes if shared is not None else save_index)(index, path)
    return {**entry, "count": int(n), "dim": int(dim), **{k: float(v) for k, v in measured.items()},
            "recall_queries": "held-out", "nbytes": int(path.stat().st_size)}
