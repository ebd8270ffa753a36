"""Dense arrays of an index for fast query-time grouping and explanations, and the index encoder loader."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from indexer.errors import IndexError_


def group_top_m(groups: np.ndarray, sims: np.ndarray, m: int) -> dict[int, float]:
    """Mean of each group's ``m`` best similarities; a group with fewer than ``m`` is padded with the
    lowest similarity in ``sims`` (an upper bound of its unseen members).

    >>> group_top_m(np.array([1, 1, 2, 1]), np.array([0.9, 0.7, 0.8, 0.1]), 2)
    {1: 0.8, 2: 0.45}
    """
    if len(sims) == 0:
        return {}
    groups, sims = np.asarray(groups), np.asarray(sims, np.float64)
    floor = sims.min()
    order = np.lexsort((-sims, groups))
    g, s = groups[order], sims[order]
    starts = np.r_[0, np.flatnonzero(np.diff(g)) + 1]
    lengths = np.diff(np.r_[starts, len(g)])
    rank = np.arange(len(g)) - np.repeat(starts, lengths)
    keep = rank < m
    group_index = np.repeat(np.arange(len(starts)), lengths)[keep]
    sums = np.bincount(group_index, weights=s[keep], minlength=len(starts))
    counts = np.bincount(group_index, minlength=len(starts))
    scores = (sums + (m - counts) * floor) / m
    return {int(key): round(float(v), 12) for key, v in zip(g[starts], scores)}


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
    patch_start: dict[int, tuple[int, int]]  # slide_row → (first patch_row, count)

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
            patch_start={s["slide_row"]: (s["patch_row_start"], s["n_patches"]) for s in ok},
        )

    def row_of(self, slide_id: str) -> int | None:
        """slide_row of an indexed slide, or None."""
        return self.ids.get(str(slide_id))

    def patch_rows_of(self, slide_rows: np.ndarray) -> np.ndarray:
        """All patch_row ids of the given slides."""
        spans = [self.patch_start[int(r)] for r in slide_rows if int(r) in self.patch_start]
        if not spans:
            return np.zeros(0, np.int64)
        return np.concatenate([np.arange(start, start + n, dtype=np.int64) for start, n in spans])

    def slide_vector(self, catalog, row: int, name: str) -> np.ndarray:
        """The stored vector of slide ``row`` in FAISS index ``name`` (slides or slides_mean)."""
        return self.slide_vectors(catalog, np.array([row]), name)[0]

    def slide_vectors(self, catalog, rows: np.ndarray, name: str) -> np.ndarray:
        """Stored vectors (len(rows), dim) of slides ``rows`` in FAISS index ``name``."""
        index = catalog.faiss(name)
        ids = np.ascontiguousarray(rows, dtype=np.int64)
        try:
            return np.asarray(index.reconstruct_batch(ids), np.float32)
        except RuntimeError:  # IVF indexes reconstruct by id only through a direct map
            import faiss

            faiss.extract_index_ivf(index).set_direct_map_type(faiss.DirectMap.Hashtable)
            return np.asarray(index.reconstruct_batch(ids), np.float32)


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
