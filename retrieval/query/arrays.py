"""Dense arrays of an index for fast query-time grouping and explanations, and the index encoder loader."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from indexer.errors import IndexError_

MIN_MASS = 0.01  # a prototype is present in a slide when its mass π_k is at least this


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


def first_m_per_group(groups: np.ndarray, wanted: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``m`` entries (in input order) of each group listed in ``wanted``.

    Returns:
        (index into ``wanted`` of each kept entry, the entry's position in ``groups``), ordered by the first
        and, within a group, by input order.

    >>> first_m_per_group(np.array([5, 7, 5, 9, 5]), np.array([5, 7]), 2)
    (array([0, 0, 1]), array([0, 2, 1]))
    """
    groups, wanted = np.asarray(groups, np.int64), np.asarray(wanted, np.int64)
    if len(groups) == 0 or len(wanted) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    by_value = np.argsort(wanted, kind="stable")
    pos = np.minimum(np.searchsorted(wanted[by_value], groups), len(wanted) - 1)
    entries = np.flatnonzero(wanted[by_value][pos] == groups)
    which = by_value[pos[entries]]
    order = np.argsort(which, kind="stable")
    which, entries = which[order], entries[order]
    keep = np.arange(len(which)) - np.searchsorted(which, which) < m
    return which[keep], entries[keep]


def lookup(keys: np.ndarray, rows: np.ndarray, values: np.ndarray, default: float) -> np.ndarray:
    """``values`` of ``keys`` in the sorted ``rows``; ``default`` for keys not among them.

    >>> lookup(np.array([1, 4, 7]), np.array([1, 7]), np.array([0.5, 0.9]), 0.0).tolist()
    [0.5, 0.0, 0.9]
    """
    if len(rows) == 0:
        return np.full(len(keys), default, np.float64)
    pos = np.minimum(np.searchsorted(rows, keys), len(rows) - 1)
    return np.where(rows[pos] == keys, values[pos], default)


PATCH_FIELDS = np.dtype([("slide", np.int32), ("x", np.int32), ("y", np.int32), ("size", np.int32),
                         ("proto", np.int16), ("proto_sim", np.float32)])


@dataclass
class IndexArrays:
    """Per-slide and per-patch columns of an index as numpy arrays (loaded once per searcher).

    Each patch's fields sit side by side in one 22-byte record (half the memory of one int64 array per column;
    a lookup reads one record), and each slide's first patch and patch count in one row.
    """

    prototypes: np.ndarray  # (K, d) the prototypes P slides were aggregated with
    proto_names: list[str]
    mass: np.ndarray  # (max slide_row + 1, K)
    metadata: list[dict[str, Any] | None]  # slide_row → slides.parquet row
    ids: dict[str, int]  # slide_id → slide_row (indexed slides only)
    patches: np.ndarray  # patch_row → PATCH_FIELDS record (slide_row, level-0 x, y, size, prototype, similarity);
    # slide -1 marks ids no live patch holds (ids are never reused, so removals leave gaps)
    slide_patches: np.ndarray  # slide_row → (first patch_row, number of patches), (0, 0) for slides not indexed
    _representatives: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def n_prototypes(self) -> int:
        return self.prototypes.shape[0]

    @property
    def dim(self) -> int:
        return self.prototypes.shape[1]

    @property
    def patch_slide(self) -> np.ndarray:
        """patch_row → slide_row."""
        return self.patches["slide"]

    @property
    def patch_proto(self) -> np.ndarray:
        """patch_row → its most similar prototype."""
        return self.patches["proto"]

    @property
    def patch_proto_sim(self) -> np.ndarray:
        """patch_row → its similarity to that prototype."""
        return self.patches["proto_sim"]

    @property
    def patch_start(self) -> np.ndarray:
        """slide_row → first patch_row."""
        return self.slide_patches[:, 0]

    @property
    def patch_count(self) -> np.ndarray:
        """slide_row → number of patches."""
        return self.slide_patches[:, 1]

    @classmethod
    def load(cls, catalog) -> "IndexArrays":
        """Read the arrays from a :class:`retrieval.query.catalog.Catalog`."""
        db = catalog.db
        protos = db.sql("SELECT name, embedding FROM prototypes ORDER BY proto_id").fetchall()
        prototypes = np.asarray([p[1] for p in protos], np.float32)
        slides = catalog.slides.to_pylist()
        n_rows = max((s["slide_row"] for s in slides), default=-1) + 1
        mass = np.zeros((n_rows, len(protos)), np.float32)
        sub = db.sql("SELECT slide_row, proto_id, mass FROM subvectors").fetchnumpy()
        mass[sub["slide_row"], sub["proto_id"]] = sub["mass"]
        columns = ("slide_row", "x", "y", "size", "proto", "proto_sim")  # in PATCH_FIELDS order
        values = db.sql(f"SELECT patch_row, {', '.join(columns)} FROM patches ORDER BY patch_row").fetchnumpy()
        rows = np.asarray(values["patch_row"], np.int64)
        patches = np.zeros(int(rows[-1]) + 1 if len(rows) else 0, PATCH_FIELDS)
        patches["slide"] = -1  # ids of removed or compacted-away patches stay unused
        for field, column in zip(PATCH_FIELDS.names, columns):
            patches[field][rows] = values[column]
        metadata: list[dict[str, Any] | None] = [None] * n_rows
        slide_patches = np.zeros((n_rows, 2), np.int64)
        for s in slides:
            metadata[s["slide_row"]] = s
            if s["status"] == "ok":
                slide_patches[s["slide_row"]] = (s["patch_row_start"] or 0, s["n_patches"] or 0)
        return cls(prototypes=prototypes, proto_names=[p[0] for p in protos], mass=mass, metadata=metadata,
                   ids={s["slide_id"]: s["slide_row"] for s in slides if s["status"] == "ok"},
                   patches=patches, slide_patches=slide_patches)

    def row_of(self, slide_id: str) -> int | None:
        """slide_row of an indexed slide, or None."""
        return self.ids.get(str(slide_id))

    def patch_rows_of(self, slide_rows: np.ndarray) -> np.ndarray:
        """All patch_row ids of the given slides, one consecutive block per slide in order (none for unknown rows)."""
        rows = np.asarray(slide_rows, np.int64)
        known = (rows >= 0) & (rows < len(self.slide_patches))
        starts, counts = self.slide_patches[np.where(known, rows, 0)].T
        counts = np.where(known, counts, 0)
        return np.repeat(starts - (np.cumsum(counts) - counts), counts) + np.arange(counts.sum(), dtype=np.int64)

    def representative_patches(self, m: int) -> np.ndarray:
        """(slide_row, prototype, m) → the slide's patches assigned to that prototype, most similar to it first,
        -1 where there are fewer: the patches that weigh most in its sub-vector ẑ_k. One sort of all patches on
        first use (~0.1 s per million), then kept."""
        if m not in self._representatives:
            k = self.n_prototypes
            group = self.patch_slide.astype(np.int64) * k + self.patch_proto
            order = np.argsort(group * 4.0 + (1.0 - self.patch_proto_sim), kind="stable")  # 1 − sim ∈ [0, 2] < 4
            order = order[self.patch_slide[order] >= 0]  # unused ids belong to no slide
            group = group[order]
            starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
            rank = np.arange(len(group)) - np.repeat(starts, np.diff(np.r_[starts, len(group)]))
            table = np.full((len(self.mass) * k, m), -1, np.int64)
            keep = rank < m
            table[group[keep], rank[keep]] = order[keep]
            self._representatives[m] = table.reshape(len(self.mass), k, m)
        return self._representatives[m]

    def slide_vector(self, catalog, row: int, name: str) -> np.ndarray:
        """The stored vector of slide ``row`` in FAISS index ``name`` (slides or slides_mean)."""
        return self.slide_vectors(catalog, np.array([row]), name)[0]

    def slide_vectors(self, catalog, rows: np.ndarray, name: str) -> np.ndarray:
        """Stored vectors (len(rows), dim) of slides ``rows`` in FAISS index ``name``."""
        from indexer.vectors import reconstruct

        return reconstruct(catalog.faiss(name), rows)


def load_index_encoder(manifest: dict[str, Any], device: str = "auto"):
    """Load the encoder an index was built with and check its weights fingerprint."""
    from indexer.models.encoders import load_encoder

    spec = manifest["encoder"]
    encoder = load_encoder(spec["name"], checkpoint=spec.get("checkpoint"), device=device)
    if encoder.weights_sha256 != spec["weights_sha256"]:
        raise IndexError_(
            f"encoder {spec['name']} now has weights {encoder.weights_sha256[:12]}, but the index was built with "
            f"{spec['weights_sha256'][:12]}; make the checkpoint {spec.get('checkpoint')} available again"
        )
    return encoder
