"""Dense arrays of an index for fast query-time grouping and explanations, and the index encoder loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.errors import IndexError_


def group_top_m(groups: np.ndarray, sims: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean of each group's ``m`` best similarities; a group with fewer than ``m`` is padded with the
    lowest similarity in ``sims`` (an upper bound of its unseen members).

    Returns:
        (sorted distinct groups, their scores).

    >>> group_top_m(np.array([1, 1, 2, 1]), np.array([0.9, 0.7, 0.8, 0.1]), 2)
    (array([1, 2]), array([0.8 , 0.45]))
    """
    groups, sims = np.asarray(groups, np.int64), np.asarray(sims, np.float64)
    if len(sims) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.float64)
    order = np.lexsort((-sims, groups))
    g, s = groups[order], sims[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    lengths = np.diff(np.r_[starts, len(g)])
    rank = np.arange(len(g)) - np.repeat(starts, lengths)
    keep = rank < m
    group_index = np.repeat(np.arange(len(starts)), lengths)[keep]
    sums = np.bincount(group_index, weights=s[keep], minlength=len(starts))
    counts = np.bincount(group_index, minlength=len(starts))
    return g[starts], (sums + (m - counts) * sims.min()) / m


def lookup(keys: np.ndarray, rows: np.ndarray, values: np.ndarray, default: float) -> np.ndarray:
    """``values`` of ``keys`` in the sorted ``rows``; ``default`` for keys not among them.

    >>> lookup(np.array([1, 4, 7]), np.array([1, 7]), np.array([0.5, 0.9]), 0.0).tolist()
    [0.5, 0.0, 0.9]
    """
    if len(rows) == 0:
        return np.full(len(keys), default, np.float64)
    pos = np.minimum(np.searchsorted(rows, keys), len(rows) - 1)
    return np.where(rows[pos] == keys, values[pos], default)


@dataclass
class IndexArrays:
    """Per-slide and per-patch columns of an index as numpy arrays (loaded once per searcher)."""

    prototypes: np.ndarray  # (K, d) the prototypes P slides were aggregated with
    proto_names: list[str]
    mass: np.ndarray  # (max slide_row + 1, K)
    metadata: dict[int, dict[str, Any]]  # slide_row → slides.parquet row
    ids: dict[str, int]  # slide_id → slide_row (indexed slides only)
    patch_slide: np.ndarray  # patch_row → slide_row
    patch_xy: np.ndarray  # (n, 2)
    patch_size: np.ndarray
    patch_proto: np.ndarray
    patch_start: np.ndarray  # slide_row → first patch_row
    patch_count: np.ndarray  # slide_row → number of patches (0 for slides not indexed)

    @property
    def n_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @property
    def dim(self) -> int:
        return self.prototypes.shape[1]

    @classmethod
    def load(cls, catalog) -> "IndexArrays":
        """Read the arrays from a :class:`retrieval.catalog.Catalog`."""
        db = catalog.db
        protos = db.sql("SELECT name, embedding FROM prototypes ORDER BY proto_id").fetchall()
        prototypes = np.asarray([p[1] for p in protos], np.float32)
        slides = catalog.slides.to_pylist()
        n_rows = max((s["slide_row"] for s in slides), default=-1) + 1
        mass = np.zeros((n_rows, len(protos)), np.float32)
        sub = db.sql("SELECT slide_row, proto_id, mass FROM subvectors").fetchnumpy()
        mass[sub["slide_row"], sub["proto_id"]] = sub["mass"]
        patches = db.sql("SELECT slide_row, x, y, size, proto FROM patches ORDER BY patch_row").fetchnumpy()
        ok = [s for s in slides if s["status"] == "ok"]
        return cls(
            prototypes=prototypes,
            proto_names=[p[0] for p in protos],
            mass=mass,
            metadata={s["slide_row"]: s for s in slides},
            ids={s["slide_id"]: s["slide_row"] for s in ok},
            patch_slide=np.asarray(patches["slide_row"], np.int64),
            patch_xy=np.stack([patches["x"], patches["y"]], axis=1).astype(np.int64) if len(patches["x"]) else np.zeros((0, 2), np.int64),
            patch_size=np.asarray(patches["size"], np.int64),
            patch_proto=np.asarray(patches["proto"], np.int64),
            patch_start=_per_row(ok, "patch_row_start", n_rows),
            patch_count=_per_row(ok, "n_patches", n_rows),
        )

    def row_of(self, slide_id: str) -> int | None:
        """slide_row of an indexed slide, or None."""
        return self.ids.get(str(slide_id))

    def patch_rows_of(self, slide_rows: np.ndarray) -> np.ndarray:
        """All patch_row ids of the given slides, in slide order."""
        rows = np.asarray(slide_rows, np.int64)
        rows = rows[(rows >= 0) & (rows < len(self.patch_count))]
        counts, starts = self.patch_count[rows], self.patch_start[rows]
        before = np.cumsum(counts) - counts
        return np.repeat(starts - before, counts) + np.arange(counts.sum(), dtype=np.int64)

    def slide_vector(self, catalog, row: int, name: str) -> np.ndarray:
        """The stored vector of slide ``row`` in FAISS index ``name`` (slides or slides_mean)."""
        return self.slide_vectors(catalog, np.array([row]), name)[0]

    def slide_vectors(self, catalog, rows: np.ndarray, name: str) -> np.ndarray:
        """Stored vectors (len(rows), dim) of slides ``rows`` in FAISS index ``name``."""
        from indexer.vector_index import reconstruct

        return reconstruct(catalog.faiss(name), rows)


def load_index_encoder(manifest: dict[str, Any], device: str = "auto"):
    """Load the encoder an index was built with and check its weights fingerprint."""
    from indexer.encoders import load_encoder

    spec = manifest["encoder"]
    encoder = load_encoder(spec["name"], checkpoint=spec.get("checkpoint"), device=device)
    if encoder.weights_sha256 != spec["weights_sha256"]:
        raise IndexError_(
            f"encoder {spec['name']} now has weights {encoder.weights_sha256[:12]}, but the index was built with "
            f"{spec['weights_sha256'][:12]}; make the checkpoint {spec.get('checkpoint')} available again"
        )
    return encoder


def _per_row(slides: list[dict[str, Any]], column: str, n_rows: int) -> np.ndarray:
    """A dense slide_row-indexed array of one slides.parquet column (0 where absent)."""
    out = np.zeros(n_rows, np.int64)
    for s in slides:
        out[s["slide_row"]] = s[column] or 0
    return out
