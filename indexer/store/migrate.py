"""Convert a version 1 index (one set of files rebuilt by every run) into version 2, in place, reusing its
stored per-slide features: nothing is encoded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from indexer.errors import IndexError_
from indexer.store import crash
from indexer.store.identity import IndexSettings
from indexer.store.staging import StagedSlide
from indexer.store.versions import Version
from indexer.store.writer import IndexWriter

V1_FILES = ("slides.parquet", "patches.parquet", "subvectors.parquet", "metadata.parquet", "slides.faiss",
            "slides_mean.faiss", "subvectors.faiss", "patches.faiss")


def migrate(root: str | Path) -> Version:
    """Migrate ``root`` to schema version 2 (resumable: a killed migration is finished by running it again)."""
    with IndexWriter(root, legacy_ok=True) as writer:
        paths = writer.paths
        if not paths.legacy_manifest.is_file():
            if writer.version.number > 0:
                return writer.version
            raise IndexError_(f"{paths.root}: not a version 1 index (no manifest.json)")
        if writer.version.number == 0:
            _convert(writer)
        crash.point("migrate.cleanup")
        paths.legacy_manifest.unlink()
        for name in V1_FILES:
            (paths.root / name).unlink(missing_ok=True)
        shutil.rmtree(paths.root / "features", ignore_errors=True)
        return writer.version


def _convert(writer: IndexWriter) -> None:
    root = writer.paths.root
    manifest = json.loads(writer.paths.legacy_manifest.read_text())
    if manifest.get("schema_version") != 1:
        raise IndexError_(f"{root}: manifest.json has schema_version {manifest.get('schema_version')}, not 1")
    settings = writer.set_identity(IndexSettings.from_json({**manifest, "created": manifest.get("created")}))
    table = pq.read_table(root / "prototypes.parquet")
    prototypes = np.asarray(table.column("embedding").to_pylist(), np.float32)
    meta = root / "metadata.parquet"
    if meta.is_file():
        writer.update_metadata(_v1_metadata(pq.read_table(meta)))
    ok, failed = [], []
    for record in pq.read_table(root / "slides.parquet").to_pylist():
        slide_id = record["slide_id"]
        override = record["mpp"] if str(record.get("mpp_source", "")).startswith("override") else None
        base = {k: record[k] for k in ("slide_id", "path", "sha256", "size_bytes", "mtime_ns", "vendor", "width",
                                       "height", "mpp", "mpp_source", "magnification")}
        base.update(fingerprint=settings.fingerprint(override), mpp_override=override)
        if record["status"] != "ok":
            failed.append({**base, "status": "error", "error": record["error"]})
            continue
        if writer.staging.get(slide_id, with_features=False) is None:
            with np.load(root / "features" / f"{slide_id}.npz") as z:
                staged = json.loads(z["record"].tobytes().decode())
                base.update(status="ok", error=None, level=staged.get("level"))
                writer.staging.put(StagedSlide(base, z["coords"], z["features"], int(z["patch_size"])))
            crash.point("migrate.stage")
        ok.append(slide_id)
    writer.fix_prototypes(table, prototypes)
    writer.commit_slides(ok, failed, [], prototypes, {"migrate": 0.0})


def _v1_metadata(table):
    """Version 1 kept the CSV as read plus a ``slide_key``; version 2 keys metadata by ``slide_id``."""
    import pyarrow as pa

    ids = table.column("slide_key")
    table = table.drop_columns([c for c in ("slide_key", "slide_id") if c in table.column_names])
    return table.add_column(0, "slide_id", ids.cast(pa.string()))
