"""Text → slide, slide → slide and patch → slide search over one index, with filters and explanations.

Scoring (all similarities are cosines in the encoder's shared space):

- text: ``score = W_PROTO·S_proto + W_PATCH·S_patch + W_MASS·S_mass``. ``S_proto`` (presence) is the best
  similarity between the query and the slide's prototype sub-vectors ẑ_k among prototypes present in the
  slide (mass π_k ≥ MIN_MASS); ``S_patch`` (local evidence) is the mean of the slide's TOP_M best patch
  similarities among the query's nearest patches; ``S_mass`` (abundance) is Σ_k π_k·cos(q, ẑ_k), so a
  slide made mostly of the described tissue outranks one with a small focus of it. Candidates come from
  the sub-vector and patch searches; a slide missing from one list gets that list's lowest returned
  similarity (an upper bound of what it would have scored); ``S_mass`` is exact for every candidate. A hit's
  explanation lists its present prototypes by exact cos(q, ẑ_k) and its patches nearest the query.
- slide: inner product of slide vectors (``proto``: ⟨s, s'⟩ = Σ_k √(π_k π'_k)·cos(ẑ_k, ẑ'_k); ``mean``: the
  mean-pool baseline). The explanation splits ⟨s, s'⟩ into its per-prototype terms and shows the hit's
  patches that weigh most in its sub-vector of the largest term (their score: similarity to that prototype).
- patch: the query patch's nearest patches are grouped by slide; a slide scores the mean of its TOP_M
  best similarities, padded as above; ties go to the larger similarity-weighted vote of the slide's patches among the candidates.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from indexer import vectors as vi
from indexer.errors import QueryError
from retrieval.catalog import Catalog
from retrieval.results import PatchMatch, PrototypeMatch, SearchHit, SearchResult
from retrieval.search_support import IndexArrays, first_m_per_group, group_top_m, load_index_encoder, lookup

W_PROTO, W_PATCH, W_MASS = 0.4, 0.4, 0.2
MIN_MASS = 0.01
TOP_M = 3
PATCH_CANDIDATES = 50  # nearest patches fetched per requested hit
EXPLAIN = 3  # prototypes and patches shown per hit
TIE_DECIMALS = 6  # scores equal to this many decimals are ties


class SlideSearcher:
    """Open an index once, then run text, slide and patch queries against it.

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
        for name in ("arrays", "bank", "_composition", "_derived", "report_index"):
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
        """The version's report tables (``retrieval/report_search.py``)."""
        from retrieval.report_search import ReportIndex

        return ReportIndex(self.catalog)

    # -- text → slide ---------------------------------------------------------------------
    def search_text(self, query: str, k: int = 10, where: str | None = None, expand: bool = True,
                    source: str | None = None, has: tuple[str, ...] = ()) -> SearchResult:
        """Slides matching a free-text description (see the module docstring for the fusion).

        Args:
            source: ``image``, ``report`` or ``both`` (None: both when the index has reports); report
                evidence is fused by ``retrieval/report_search.py``.
            has: report attribute filters (``X``, ``not X``, ``maybe X``).
        """
        from retrieval.report_search import fused_text_search, wants_reports

        if wants_reports(self.catalog, source, has):
            return fused_text_search(self, query, k, where, expand, source, has)
        q, details = self.text_vector(query, where, expand)
        return self.search_text_vector(q, k, where, query=query, details=details)

    def text_vector(self, query: str, where: str | None = None, expand: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
        """The unit query vector (d,) of a text and how it was built; a bad ``where`` fails before the model loads."""
        from retrieval.queries import embed_text_query

        if not (query or "").strip():
            raise QueryError("empty text query")
        self.catalog.allowed_slide_rows(where)  # the result is cached for the search that follows
        return embed_text_query(self.encoder, query, self.bank, expand)

    def search_text_vector(self, q: np.ndarray, k: int = 10, where: str | None = None, query: str = "",
                           details: dict[str, Any] | None = None, allowed: np.ndarray | None = None) -> SearchResult:
        """Text search from an already embedded query vector (d,); ``allowed`` (slide rows) replaces ``where``."""
        _check_k(k)
        arrays = self.arrays
        allowed = self.catalog.allowed_slide_rows(where) if allowed is None else allowed
        kp = arrays.n_prototypes
        sub_allowed = self._derived_ids(allowed, "subvectors", lambda a: (a[:, None] * kp + np.arange(kp)).ravel())
        sims, subs = vi.search(self.catalog.faiss("subvectors"), q[None], k * kp * 2, sub_allowed)
        keep = subs[0] >= 0
        sims, subs = sims[0][keep], subs[0][keep]
        present = arrays.mass[subs // kp, subs % kp] >= MIN_MASS
        sims, subs = sims[present], subs[present]
        proto_rows, proto_best = group_top_m(subs // kp, sims, 1)
        patch_sims, patch_ids = self._nearest_patches(q, k, allowed)
        patch_slides = arrays.patch_slide[patch_ids]
        patch_rows, patch_best = group_top_m(patch_slides, patch_sims, TOP_M)
        candidates = np.union1d(proto_rows, patch_rows)
        score = fuse(candidates, (proto_rows, proto_best), (patch_rows, patch_best), self._abundance(q, candidates))
        top = np.lexsort((candidates, -np.round(score, TIE_DECIMALS)))[:k]
        hit_rows = candidates[top]
        hits = self._hits(hit_rows, score[top], *self._explain_text(q, hit_rows, patch_slides, patch_ids, patch_sims))
        fusion = {"w_proto": W_PROTO, "w_patch": W_PATCH, "w_mass": W_MASS, "top_m": TOP_M, "min_mass": MIN_MASS}
        return SearchResult("text", query, hits, {**(details or {}), "fusion": fusion})

    @cached_property
    def _composition(self) -> np.ndarray:
        """w_s = Σ_k π_k ẑ_k = Σ_k √π_k·s_k per slide row (s: the stored slide vectors), so S_mass = ⟨q, w_s⟩."""
        arrays = self.arrays
        kp, d = arrays.n_prototypes, arrays.dim
        w = np.zeros((len(arrays.mass), d), np.float32)
        rows = np.asarray(sorted(arrays.ids.values()), np.int64)
        for start in range(0, len(rows), 4096):
            chunk = rows[start:start + 4096]
            w[chunk] = np.einsum("nk,nkd->nd", np.sqrt(arrays.mass[chunk]), self._slide_blocks(chunk))
        return w

    def _slide_blocks(self, rows: np.ndarray) -> np.ndarray:
        """The stored slide vectors of ``rows`` as (len(rows), K, d) blocks √π_k ẑ_k."""
        arrays = self.arrays
        return arrays.slide_vectors(self.catalog, rows, "slides").reshape(-1, arrays.n_prototypes, arrays.dim)

    def _explain_text(self, q: np.ndarray, hit_rows: np.ndarray, patch_slides: np.ndarray, patch_ids: np.ndarray,
                      patch_sims: np.ndarray) -> tuple[tuple, tuple]:
        """Why each text hit matched, as ``_hits`` takes it: its present prototypes (π_k ≥ MIN_MASS) most
        similar to the query, with the exact cos(q, ẑ_k) = ⟨q, √π_k ẑ_k⟩/√π_k, and its patches nearest the query
        among the searched ones; a hit that has none of those (it came in through its sub-vectors) shows the
        representative patches of its most similar prototype that has any, scored against the query."""
        arrays, q = self.arrays, q.astype(np.float32)
        mass = arrays.mass[hit_rows]
        cos = (self._slide_blocks(hit_rows) @ q) / np.sqrt(np.maximum(mass, 1e-12))
        cos = np.where(mass >= MIN_MASS, cos, -np.inf)
        order = np.argsort(-cos, axis=1, kind="stable")
        best = np.take_along_axis(cos, order, 1)
        which, column = np.nonzero(best[:, :EXPLAIN] > -np.inf)
        protos = (which, order[which, column], best[which, column])
        which, entries = first_m_per_group(patch_slides, hit_rows, EXPLAIN)
        patches = (which, patch_ids[entries], patch_sims[entries])
        lacking = np.setdiff1d(np.arange(len(hit_rows)), which)
        if len(lacking):
            hit, rows = self._representatives(hit_rows[lacking], order[lacking], best[lacking] > -np.inf)
            sims = vi.reconstruct(self.catalog.faiss("patches"), rows) @ q
            ranked = np.lexsort((-sims, hit))
            patches = tuple(np.r_[a, b[ranked]] for a, b in zip(patches, (lacking[hit], rows, sims)))
        return protos, patches

    def _abundance(self, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """S_mass = Σ_k π_k·cos(q, ẑ_k) for slides ``rows``."""
        return self._composition[rows] @ q.astype(np.float32)

    def _derived_ids(self, allowed: np.ndarray | None, name: str, derive) -> np.ndarray | None:
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

    def _nearest_patches(self, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """The query's PATCH_CANDIDATES·k nearest patches (similarities, patch rows), within allowed slides."""
        index = self.catalog.faiss("patches")
        n = min(index.ntotal, max(200, k * PATCH_CANDIDATES))
        if n == 0:
            return np.zeros(0, np.float32), np.zeros(0, np.int64)
        patch_allowed = self._derived_ids(allowed, "patches", self.arrays.patch_rows_of)
        sims, rows = vi.search(index, q[None].astype(np.float32), n, patch_allowed)
        keep = rows[0] >= 0
        return sims[0][keep], rows[0][keep]

    # -- slide → slide --------------------------------------------------------------------
    def search_slide(self, slide: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                     mode: str = "proto") -> SearchResult:
        """Slides that look like an indexed slide (by slide_id) or a new slide file (embedded on the fly).

        Args:
            slide: an indexed slide_id, or the path of a slide file (not added to the index).
            k: number of hits.
            where: SQL filter over slide columns.
            exclude_same: a column (e.g. patient_id): drop the query slide and every slide sharing its value.
            mode: ``proto`` (ProAlign slide vectors) or ``mean`` (mean-pool baseline).
        """
        _check_k(k)
        if mode not in ("proto", "mean"):
            raise QueryError(f"unknown mode {mode!r}: use proto or mean")
        row = self.arrays.row_of(slide)
        if row is not None:
            proto_vec = self.arrays.slide_vector(self.catalog, row, "slides")
            query_vec = proto_vec if mode == "proto" else self.arrays.slide_vector(self.catalog, row, "slides_mean")
        elif _is_file(slide):
            if exclude_same:
                raise QueryError("--exclude-same needs an indexed slide_id (a new slide file has no metadata)")
            emb = self._embed_new_slide(Path(slide))
            proto_vec = emb.slide_vector
            query_vec = proto_vec if mode == "proto" else emb.mean_vector
        else:
            shown = repr(str(slide)[:80]) + ("..." if len(str(slide)) > 80 else "")
            raise QueryError(f"unknown slide {shown}: not a slide_id of this index nor a slide file")
        allowed = self.catalog.allowed_slide_rows(where, exclude_row=row if exclude_same else None, exclude_same=exclude_same)
        name = "slides" if mode == "proto" else "slides_mean"
        sims, rows = vi.search(self.catalog.faiss(name), query_vec[None], k, allowed)
        found = rows[0] >= 0
        hit_rows, hit_sims = rows[0][found], sims[0][found]
        hits = self._hits(hit_rows, hit_sims, *self._explain_pairs(proto_vec, hit_rows))
        return SearchResult("slide", str(slide), hits, {"mode": mode, "exclude_same": exclude_same})

    def _embed_new_slide(self, path: Path):
        from indexer.aggregation.aggregate import AggregationConfig, aggregate_slide
        from indexer.ingestion.encode import encode_slide
        from indexer.ingestion.config import IndexConfig
        from indexer.tiles.tiling import TilingConfig

        m = self.catalog.manifest
        tiling = {k: v for k, v in m["tiling"].items() if k != "max_patches"}
        config = IndexConfig(tiling=TilingConfig(**tiling), max_patches=m["tiling"].get("max_patches"), num_workers=0)
        staged = encode_slide(path, {"slide_id": path.stem}, config, self.encoder)
        return aggregate_slide(staged.features.astype(np.float32), self.arrays.prototypes, AggregationConfig(**m["aggregation"]))

    def _explain_pairs(self, query_vec: np.ndarray, hit_rows: np.ndarray) -> tuple[tuple, tuple]:
        """Why each hit matched, as ``_hits`` takes it: the per-prototype terms √π_k ẑ_k·√π'_k ẑ'_k of ⟨s, s'⟩
        (largest first), and the hit's patches that weigh most in its ẑ'_k of the largest term that has any:
        those assigned to that prototype, most similar to it first. One reconstruction of the hits' slide
        vectors; the patches come from the stored per-patch assignment (``representative_patches``)."""
        arrays = self.arrays
        kp, d = arrays.n_prototypes, arrays.dim
        negative_terms = -(self._slide_blocks(hit_rows) * query_vec.reshape(kp, d)).sum(axis=2)
        order = np.argsort(negative_terms, axis=1)
        terms = -np.sort(negative_terms, axis=1)
        which, column = np.nonzero(terms[:, :EXPLAIN] > 1e-6)
        protos = (which, order[which, column], terms[which, column])
        which, patch_rows = self._representatives(hit_rows, order, terms > 1e-6)
        return protos, (which, patch_rows, arrays.patch_proto_sim[patch_rows])

    def slide_hits(self, rows, scores, query_vec: np.ndarray) -> tuple[SearchHit, ...]:
        """Hits for slide ``rows`` (rank order) explained against a ProAlign vector, as slide → slide explains them."""
        rows = np.asarray(rows, np.int64)
        return self._hits(rows, np.asarray(scores, np.float64), *self._explain_pairs(np.asarray(query_vec, np.float32), rows))

    def _representatives(self, rows: np.ndarray, ranked: np.ndarray,
                         usable: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each slide row, the representative patches of the first prototype in its row of ``ranked``
        (prototype ids, best first) that is ``usable`` and has any: (index into ``rows``, patch_row) pairs."""
        shown = self.arrays.representative_patches(EXPLAIN)[rows[:, None], ranked]  # (slides, K, EXPLAIN), -1 pads
        usable = usable & (shown[:, :, 0] >= 0)
        chosen = np.where(usable.any(axis=1)[:, None], shown[np.arange(len(rows)), usable.argmax(axis=1)], -1)
        which, column = np.nonzero(chosen >= 0)
        return which, chosen[which, column]

    # -- patch → slide --------------------------------------------------------------------
    def search_patch(self, image, k: int = 10, where: str | None = None, exclude_same: str | None = None) -> SearchResult:
        """Slides containing tissue like ``image``: an image path, a PIL image, or ``SLIDE_ID@x,y,w,h``.

        Args:
            exclude_same: for a region query, a column (e.g. patient_id, or slide_id for the region's slide
                only): drop the region's slide and every slide sharing its value.
        """
        _check_k(k)
        label = image if isinstance(image, str) else getattr(image, "filename", "image")
        q, region_row = self.patch_vector(image)
        if exclude_same and region_row is None:
            raise QueryError("--exclude-same needs a region of an indexed slide (SLIDE_ID@x,y,w,h) as the query")
        allowed = self.catalog.allowed_slide_rows(where, exclude_row=region_row if exclude_same else None,
                                                  exclude_same=exclude_same)
        sims, ids = self._nearest_patches(q, k, allowed)
        slides = self.arrays.patch_slide[ids]
        rows, score = group_top_m(slides, sims, TOP_M)
        votes = np.bincount(np.searchsorted(rows, slides), weights=sims, minlength=len(rows))
        top = np.lexsort((rows, -votes, -np.round(score, TIE_DECIMALS)))[:k]
        which, entries = first_m_per_group(slides, rows[top], EXPLAIN)
        patch_protos = self.arrays.patch_proto[ids[entries]]
        first = np.sort(np.unique(which * self.arrays.n_prototypes + patch_protos, return_index=True)[1])
        protos = (which[first], patch_protos[first], sims[entries][first])  # each shown patch's prototype, once
        hits = self._hits(rows[top], score[top], protos, (which, ids[entries], sims[entries]))
        return SearchResult("patch", str(label), hits, {"top_m": TOP_M, "candidates": int(len(ids))})

    def patch_vector(self, image) -> tuple[np.ndarray, int | None]:
        """The embedding (d,) of a query patch (as ``search_patch`` takes it) and its slide_row when it is a region."""
        from retrieval.queries import load_query_image, parse_region, read_region_image

        row = None
        if isinstance(image, (str, Path)):
            region = parse_region(str(image))
            if region is not None:
                image, row = self._region_image(region, read_region_image), self.arrays.row_of(region.slide_id)
            else:
                image = load_query_image(image)
        return self.encoder.encode_images([image])[0], row

    def _region_image(self, region, read_region_image):
        row = self.arrays.row_of(region.slide_id)
        if row is None:
            raise QueryError(f"unknown slide {region.slide_id!r} in region query")
        meta = self.arrays.metadata[row]
        return read_region_image(meta["path"], meta["mpp"], region, self.catalog.manifest["tiling"]["magnification"])

    # -- shared ---------------------------------------------------------------------------
    def _hits(self, rows: np.ndarray, scores: np.ndarray, protos: tuple, patches: tuple) -> tuple[SearchHit, ...]:
        """Hit records for slide ``rows`` (rank order) with their explanations.

        Args:
            protos: (hit index, prototype id, similarity) arrays, in display order within each hit.
            patches: (hit index, patch_row, score) arrays, in display order within each hit.
        """
        arrays, names = self.arrays, self.arrays.proto_names
        proto_lists: list[list[PrototypeMatch]] = [[] for _ in range(len(rows))]
        which, ids, sims = protos
        masses = arrays.mass[rows[which], ids].tolist()
        for hit, proto, mass, sim in zip(which.tolist(), ids.tolist(), masses, sims.tolist()):
            proto_lists[hit].append(PrototypeMatch(proto, names[proto], mass, sim))
        patch_lists: list[list[PatchMatch]] = [[] for _ in range(len(rows))]
        which, ids, sims = patches
        records = arrays.patches[ids].tolist()  # (slide, x, y, size, proto, proto_sim) per patch
        for hit, row, (_, x, y, size, proto, _), sim in zip(which.tolist(), ids.tolist(), records, sims.tolist()):
            patch_lists[hit].append(PatchMatch(row, x, y, size, sim, names[proto]))
        hits = []
        ranked = zip(rows.tolist(), scores.tolist(), proto_lists, patch_lists)
        for rank, (row, score, shown_protos, shown_patches) in enumerate(ranked, 1):
            meta = arrays.metadata[row]
            hits.append(SearchHit(rank, meta["slide_id"], row, score, meta, tuple(shown_protos), tuple(shown_patches)))
        return tuple(hits)


def _is_file(text: str) -> bool:
    """Whether ``text`` names an existing file (False for names the OS cannot even look up)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def _check_k(k: int) -> None:
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")


def fuse(candidates: np.ndarray, proto: tuple[np.ndarray, np.ndarray], patch: tuple[np.ndarray, np.ndarray],
         abundance: np.ndarray) -> np.ndarray:
    """W_PROTO·S_proto + W_PATCH·S_patch + W_MASS·S_mass for each candidate slide; a slide missing from the
    prototype or the patch list takes that list's lowest value.

    >>> fuse(np.array([1, 2]), (np.array([1]), np.array([0.9])), (np.array([1, 2]), np.array([0.5, 0.7])),
    ...      np.array([0.6, 0.1])).round(6).tolist()
    [0.68, 0.66]
    """
    proto_score = lookup(candidates, *proto, proto[1].min() if len(proto[1]) else 0.0)
    patch_score = lookup(candidates, *patch, patch[1].min() if len(patch[1]) else 0.0)
    return W_PROTO * proto_score + W_PATCH * patch_score + W_MASS * abundance
