"""The open index every query source reads: one committed version's catalog, arrays, encoder, bank and reports,
each loaded on first use and kept (``refresh`` moves to a newer version)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from retrieval.query.arrays import IndexArrays, load_index_encoder
from retrieval.query.catalog import Catalog


class OpenIndex:
    """Open an index version once; the sources (``image``, ``report_search``, ``cases``, ``spaces``) read it.

    Args:
        index: the index directory.
        encoder: an already loaded encoder (default: the one named in the manifest, loaded on first use).
        device: where to load the encoder.
    """

    def __init__(self, index: str | Path, encoder=None, device: str = "auto"):
        self.catalog = Catalog(index)
        self._encoder = encoder
        self._device = device

    def refresh(self) -> bool:
        """Move to the newest committed version (the encoder stays loaded); True when there was one."""
        if self.catalog.is_current():
            return False
        self.catalog = Catalog(self.catalog.root)
        for name in ("arrays", "bank", "composition", "_derived", "report_index"):
            self.__dict__.pop(name, None)
        return True

    @cached_property
    def encoder(self):
        """The index's encoder (checked against the manifest's weights fingerprint)."""
        return self._encoder or load_index_encoder(self.catalog.manifest, self._device)

    @cached_property
    def arrays(self) -> IndexArrays:
        """Dense per-slide and per-patch arrays for fast grouping and explanations."""
        return IndexArrays.load(self.catalog)

    @cached_property
    def bank(self):
        """The knowledge bank the index was built with (None when it is gone or changed: no expansion then)."""
        from indexer.aggregation.bank import load_bank
        from indexer.errors import UserError

        spec = self.catalog.manifest["bank"]
        try:
            bank = load_bank(spec.get("source", spec["name"]))
        except UserError:
            return None
        return bank if bank.sha256 == spec["sha256"] else None

    @cached_property
    def report_index(self):
        """The version's report tables (``retrieval/query/report_search.py``)."""
        from retrieval.query.report_search import ReportIndex

        return ReportIndex(self.catalog)

    @cached_property
    def composition(self) -> np.ndarray:
        """w_s = Σ_k π_k ẑ_k = Σ_k √π_k·s_k per slide row (s: the stored slide vectors), so S_mass = ⟨q, w_s⟩."""
        arrays = self.arrays
        kp, d = arrays.n_prototypes, arrays.dim
        w = np.zeros((len(arrays.mass), d), np.float32)
        rows = np.asarray(sorted(arrays.ids.values()), np.int64)
        for start in range(0, len(rows), 4096):
            chunk = rows[start:start + 4096]
            w[chunk] = np.einsum("nk,nkd->nd", np.sqrt(arrays.mass[chunk]), self.slide_blocks(chunk))
        return w

    def slide_blocks(self, rows: np.ndarray) -> np.ndarray:
        """The stored slide vectors of ``rows`` as (len(rows), K, d) blocks √π_k ẑ_k."""
        arrays = self.arrays
        return arrays.slide_vectors(self.catalog, rows, "slides").reshape(-1, arrays.n_prototypes, arrays.dim)

    def derived_ids(self, allowed: np.ndarray | None, name: str, derive) -> np.ndarray | None:
        """Ids of FAISS index ``name`` allowed by a slide filter, kept for as long as the filter's rows are cached."""
        if allowed is None:
            return None
        cache = self.__dict__.setdefault("_derived", {})
        key = (id(allowed), name)
        if key not in cache or cache[key][0] is not allowed:
            if len(cache) >= 64:
                cache.pop(next(iter(cache)))
            cache[key] = (allowed, derive(allowed))
        return cache[key][1]
