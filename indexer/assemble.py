"""Assemble an index directory from staged slides: aggregate, write Parquet tables and FAISS indexes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.aggregate import AggregationConfig, aggregate_slide
from indexer.errors import UserError
from indexer.store import IndexDir, atomic_path

RECALL_K = 10
REFINE_SAMPLE = 200_000  # patches (spread over slides) used to refine prototypes


@dataclass
class Assembled:
    """What an assembly wrote: counts, FAISS index facts and stage timings."""

    counts: dict[str, int]
    indexes: dict[str, dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)


def assign_slide_rows(records: list[dict[str, Any]], previous: dict[str, int]) -> list[dict[str, Any]]:
    """Give every record a ``slide_row``: kept from the previous index, else the next free row.

    New slides get rows in slide_id order, so an interrupted and resumed run numbers them as an
    uninterrupted one would.
    """
    next_row = max(previous.values(), default=-1) + 1
    out = []
    for record in sorted(records, key=lambda r: r["slide_id"]):
        row = previous.get(record["slide_id"])
        if row is None:
            row, next_row = next_row, next_row + 1
        out.append({**record, "slide_row": row})
    return sorted(out, key=lambda r: r["slide_row"])


def previous_slide_rows(index: IndexDir) -> dict[str, int]:
    """slide_id → slide_row of the index as last written (empty for a new index)."""
    path = index.table("slides")
    if not path.is_file():
        return {}
    table = pq.read_table(path, columns=["slide_id", "slide_row"])
    return dict(zip(table.column("slide_id").to_pylist(), table.column("slide_row").to_pylist()))


def assemble(
    index: IndexDir,
    records: list[dict[str, Any]],
    prototypes: np.ndarray,
    prototype_table: pa.Table,
    aggregation: AggregationConfig,
    metadata: dict[str, dict[str, Any]],
    max_index_memory: int | None = None,
) -> Assembled:
    """Aggregate every ok slide against ``prototypes`` and (re)write all tables and FAISS indexes.

    Args:
        index: the index directory; staged features are read from it.
        records: staged slide records (ok and failed) with ``slide_row`` assigned.
        prototypes: (K, d) prototype embeddings, already refined when the run asked for it.
        prototype_table: the prototypes.parquet content.
        aggregation: ProAlign parameters.
        metadata: slide_id → user metadata columns.
        max_index_memory: memory budget in bytes for each FAISS index (None: no limit).
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    k = prototypes.shape[0]
    slide_rows, slide_vecs, mean_vecs, sub_rows, sub_vecs, masses = [], [], [], [], [], []
    patch_tables, patch_feats = [], []
    next_patch_row = 0
    for record in records:
        if record.get("status") != "ok":
            continue
        staged = index.load_staged(record["slide_id"])
        feats = staged.features.astype(np.float32)
        emb = aggregate_slide(feats, prototypes, aggregation)
        n = len(feats)
        record.update(
            patch_row_start=next_patch_row, n_patches=n, patch_size=staged.patch_size,
            entropy=float(emb.entropy), max_mass=float(emb.max_mass),
        )
        if emb.empty:
            record.update(status="error", error="no patches to aggregate")
            continue
        rows = np.arange(next_patch_row, next_patch_row + n, dtype=np.int64)
        next_patch_row += n
        patch_tables.append(pa.table({
            "patch_row": rows,
            "slide_row": np.full(n, record["slide_row"], np.int64),
            "x": staged.coords[:, 0], "y": staged.coords[:, 1],
            "size": np.full(n, staged.patch_size, np.int64),
            "proto": emb.patch_proto.astype(np.int32),
            "proto_sim": emb.patch_proto_sim.astype(np.float32),
        }))
        patch_feats.append(staged.features)
        slide_rows.append(record["slide_row"])
        slide_vecs.append(emb.slide_vector)
        mean_vecs.append(emb.mean_vector)
        sub_rows.append(record["slide_row"] * k + np.arange(k, dtype=np.int64))
        sub_vecs.append(emb.subvectors)
        masses.append(emb.mass)
    timings["aggregate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    dim = prototypes.shape[1]
    ids = np.asarray(slide_rows, np.int64)
    _write_table(index, "slides", _slides_table(records, metadata))
    _write_table(index, "patches", pa.concat_tables(patch_tables) if patch_tables else _empty_patches())
    _write_table(index, "prototypes", _with_embedding(prototype_table, prototypes))
    _write_table(index, "subvectors", pa.table({
        "sub_row": np.concatenate(sub_rows) if sub_rows else np.zeros(0, np.int64),
        "slide_row": np.repeat(ids, k),
        "proto_id": np.tile(np.arange(k, dtype=np.int32), len(ids)),
        "mass": np.concatenate(masses).astype(np.float32) if masses else np.zeros(0, np.float32),
    }))
    timings["tables"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    vectors = {
        "slides": (_stack(slide_vecs, k * dim), ids),
        "slides_mean": (_stack(mean_vecs, dim), ids),
        "subvectors": (_stack([v for v in sub_vecs], dim), np.concatenate(sub_rows) if sub_rows else ids),
        "patches": (_stack(patch_feats, dim), np.arange(next_patch_row, dtype=np.int64)),
    }
    indexes = {name: _write_faiss(index, name, vecs, row_ids, max_index_memory) for name, (vecs, row_ids) in vectors.items()}
    timings["faiss"] = time.perf_counter() - t0
    counts = {
        "slides": len(records),
        "slides_ok": len(ids),
        "slides_failed": sum(r.get("status") != "ok" for r in records),
        "patches": next_patch_row,
        "prototypes": k,
    }
    return Assembled(counts, indexes, timings)


def _stack(parts: list[np.ndarray], dim: int) -> np.ndarray:
    if not parts:
        return np.zeros((0, dim), np.float32)
    return np.ascontiguousarray(np.concatenate([np.atleast_2d(p) for p in parts]), dtype=np.float32)


def _write_faiss(index: IndexDir, name: str, vectors: np.ndarray, ids: np.ndarray, budget: int | None) -> dict[str, Any]:
    """Choose, build, check and save one FAISS index; returns its manifest entry."""
    from indexer import vector_index as vi

    choice = vi.choose_index(len(vectors), vectors.shape[1], budget)
    faiss_index = vi.build_index(vectors, ids, choice)
    recall = 1.0 if choice.kind == "flat" or len(vectors) == 0 else vi.measure_recall(faiss_index, vectors, ids, k=RECALL_K)
    vi.save_index(faiss_index, index.faiss(name))
    return {
        "kind": choice.kind, "factory": choice.describe(), "count": int(len(vectors)), "dim": int(vectors.shape[1]),
        f"recall_at_{RECALL_K}": float(recall), "nbytes": int(index.faiss(name).stat().st_size),
    }


def _slides_table(records: list[dict[str, Any]], metadata: dict[str, dict[str, Any]]) -> pa.Table:
    """slides.parquet: computed columns, then user metadata columns (missing values null)."""
    base_cols = [
        "slide_row", "slide_id", "path", "sha256", "size_bytes", "mtime_ns", "vendor", "width", "height", "mpp",
        "mpp_source", "magnification", "n_patches", "patch_row_start", "patch_size", "status", "error",
        "entropy", "max_mass",
    ]
    user_cols = sorted({c for row in metadata.values() for c in row} - set(base_cols))
    rows = []
    for record in records:
        row = {c: record.get(c) for c in base_cols}
        user = metadata.get(record["slide_id"], {})
        row.update({c: user.get(c) for c in user_cols})
        rows.append(row)
    schema = pa.schema([
        ("slide_row", pa.int64()), ("slide_id", pa.string()), ("path", pa.string()), ("sha256", pa.string()),
        ("size_bytes", pa.int64()), ("mtime_ns", pa.int64()), ("vendor", pa.string()), ("width", pa.int64()),
        ("height", pa.int64()), ("mpp", pa.float64()), ("mpp_source", pa.string()), ("magnification", pa.float64()),
        ("n_patches", pa.int64()), ("patch_row_start", pa.int64()), ("patch_size", pa.int64()),
        ("status", pa.string()), ("error", pa.string()), ("entropy", pa.float64()), ("max_mass", pa.float64()),
    ])
    base = pa.Table.from_pylist([{c: r[c] for c in base_cols} for r in rows], schema=schema)
    for col in user_cols:
        base = base.append_column(col, pa.array([r[col] for r in rows]))
    return base


def _with_embedding(prototype_table: pa.Table, prototypes: np.ndarray) -> pa.Table:
    """Add (or replace) the ``embedding`` column: the prototypes P the slides were aggregated with."""
    column = pa.FixedSizeListArray.from_arrays(pa.array(prototypes.astype(np.float32).ravel()), prototypes.shape[1])
    if "embedding" in prototype_table.column_names:
        prototype_table = prototype_table.drop_columns(["embedding"])
    return prototype_table.append_column("embedding", column)


def _empty_patches() -> pa.Table:
    return pa.table({
        "patch_row": pa.array([], pa.int64()), "slide_row": pa.array([], pa.int64()),
        "x": pa.array([], pa.int64()), "y": pa.array([], pa.int64()), "size": pa.array([], pa.int64()),
        "proto": pa.array([], pa.int32()), "proto_sim": pa.array([], pa.float32()),
    })


def _write_table(index: IndexDir, name: str, table: pa.Table) -> None:
    with atomic_path(index.table(name)) as tmp:
        pq.write_table(table, tmp)


def rebuild(index: IndexDir, text_prototypes: np.ndarray, prototype_table: pa.Table, settings: dict[str, Any],
            metadata: dict[str, dict[str, Any]], aggregation: AggregationConfig, max_index_memory: int | None,
            run_timings: dict[str, float] | None = None) -> Assembled:
    """Re-aggregate every staged slide and rewrite tables, FAISS indexes and the manifest.

    ``run_timings`` (seconds per stage of the run that encoded slides) go into the manifest with the assembly's own.
    """
    records = assign_slide_rows(list(index.staged_records()), previous_slide_rows(index))
    prototypes = _refined_prototypes(index, records, text_prototypes, aggregation)
    assembled = assemble(index, records, prototypes, prototype_table, aggregation, metadata, max_index_memory)
    index.write_manifest({
        **({"created": index.read_manifest()["created"]} if index.exists() else {}),
        **settings,
        "counts": assembled.counts,
        "indexes": assembled.indexes,
        "timings": {k: round(v, 3) for k, v in {**(run_timings or {}), **assembled.timings}.items()},
    })
    return assembled


def _refined_prototypes(index: IndexDir, records, text_prototypes: np.ndarray, aggregation: AggregationConfig) -> np.ndarray:
    """Prototype embeddings P: the text prototypes, refined on the collection when alpha < 1 (DESIGN §3)."""
    if aggregation.alpha >= 1.0:
        return text_prototypes
    from indexer.prototypes import refine_prototypes

    ok = [r["slide_id"] for r in records if r.get("status") == "ok"]
    if not ok:
        return text_prototypes
    # An even share of at most REFINE_SAMPLE patches per slide keeps memory flat on large collections.
    per_slide = max(1, REFINE_SAMPLE // len(ok))
    feats = [_evenly_spaced(index.load_staged(slide_id).features, per_slide) for slide_id in ok]
    return refine_prototypes(text_prototypes, np.concatenate(feats).astype(np.float32), aggregation.alpha, aggregation.tau)


def _evenly_spaced(rows: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` rows spread evenly over ``rows``."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).astype(np.int64)]


def remove_slides(out: str | Path, slide_ids: Iterable[str]) -> Assembled:
    """Delete slides from an index and rewrite it (no encoder needed: the prototypes are stored)."""
    from indexer.metadata import stored_metadata

    index = IndexDir(out)
    manifest = index.read_manifest()
    slide_ids = list(slide_ids)
    missing = [s for s in slide_ids if not (index.staged_path(s).exists() or index.error_path(s).exists())]
    if missing:
        raise UserError(f"not in {index.root}: {', '.join(missing)}")
    for slide_id in slide_ids:
        index.unstage(slide_id)
    table = pq.read_table(index.table("prototypes")).drop_columns(["embedding"])
    text_prototypes = np.asarray(table.column("text_embedding").to_pylist(), np.float32)
    settings = {k: manifest[k] for k in ("encoder", "tiling", "bank", "aggregation", "max_index_memory", "features_imported")}
    return rebuild(index, text_prototypes, table, settings, stored_metadata(index.root, None),
                   AggregationConfig(**manifest["aggregation"]), manifest["max_index_memory"])
