"""Immutable segments: a batch of slides' tables, float16 patch features, exact vectors and FAISS indexes
(their schemas, what one slide contributes, and read access; :mod:`indexer.store.builder` writes them)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

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
