"""The image-vector source: text (as a vector), slide and patch queries scored against the index's vectors.

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

from pathlib import Path
from typing import Any

import numpy as np

from indexer import vectors as vi
from indexer.errors import QueryError
from retrieval.query.arrays import MIN_MASS, first_m_per_group, group_top_m
from retrieval.query.explain import EXPLAIN, build_hits, explain_pairs, explain_text
from retrieval.query.fuse import W_MASS, W_PATCH, W_PROTO, fuse
from retrieval.query.options import MODES
from retrieval.query.results import SearchResult

TOP_M = 3
PATCH_CANDIDATES = 50  # nearest patches fetched per requested hit
TIE_DECIMALS = 6  # scores equal to this many decimals are ties


def search_text_vector(index, q: np.ndarray, k: int = 10, where: str | None = None, query: str = "",
                       details: dict[str, Any] | None = None, allowed: np.ndarray | None = None) -> SearchResult:
    """Text search from an already embedded query vector (d,) over an ``OpenIndex``; ``allowed`` (slide rows)
    replaces ``where``."""
    check_k(k)
    arrays = index.arrays
    allowed = index.catalog.allowed_slide_rows(where) if allowed is None else allowed
    kp = arrays.n_prototypes
    sub_allowed = index.derived_ids(allowed, "subvectors", lambda a: (a[:, None] * kp + np.arange(kp)).ravel())
    sims, subs = vi.search(index.catalog.faiss("subvectors"), q[None], k * kp * 2, sub_allowed)
    keep = subs[0] >= 0
    sims, subs = sims[0][keep], subs[0][keep]
    present = arrays.mass[subs // kp, subs % kp] >= MIN_MASS
    sims, subs = sims[present], subs[present]
    proto_rows, proto_best = group_top_m(subs // kp, sims, 1)
    patch_sims, patch_ids = nearest_patches(index, q, k, allowed)
    patch_slides = arrays.patch_slide[patch_ids]
    patch_rows, patch_best = group_top_m(patch_slides, patch_sims, TOP_M)
    candidates = np.union1d(proto_rows, patch_rows)
    score = fuse(candidates, (proto_rows, proto_best), (patch_rows, patch_best), abundance(index, q, candidates))
    top = np.lexsort((candidates, -np.round(score, TIE_DECIMALS)))[:k]
    hit_rows = candidates[top]
    hits = build_hits(arrays, hit_rows, score[top], *explain_text(index, q, hit_rows, patch_slides, patch_ids, patch_sims))
    fusion = {"w_proto": W_PROTO, "w_patch": W_PATCH, "w_mass": W_MASS, "top_m": TOP_M, "min_mass": MIN_MASS}
    return SearchResult("text", query, hits, {**(details or {}), "fusion": fusion})


def abundance(index, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """S_mass = Σ_k π_k·cos(q, ẑ_k) for slides ``rows``."""
    return index.composition[rows] @ q.astype(np.float32)


def nearest_patches(index, q: np.ndarray, k: int, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """The query's PATCH_CANDIDATES·k nearest patches (similarities, patch rows), within allowed slides."""
    faiss_index = index.catalog.faiss("patches")
    n = min(faiss_index.ntotal, max(200, k * PATCH_CANDIDATES))
    if n == 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    patch_allowed = index.derived_ids(allowed, "patches", index.arrays.patch_rows_of)
    sims, rows = vi.search(faiss_index, q[None].astype(np.float32), n, patch_allowed)
    keep = rows[0] >= 0
    return sims[0][keep], rows[0][keep]


def search_slide(index, slide: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                 mode: str = "proto") -> SearchResult:
    """Slides that look like an indexed slide (by slide_id) or a new slide file (embedded on the fly).

    Args:
        slide: an indexed slide_id, or the path of a slide file (not added to the index).
        k: number of hits.
        where: SQL filter over slide columns.
        exclude_same: a column (e.g. patient_id): drop the query slide and every slide sharing its value.
        mode: ``proto`` (ProAlign slide vectors) or ``mean`` (mean-pool baseline).
    """
    check_k(k)
    if mode not in MODES:
        raise QueryError(f"unknown mode {mode!r}: use proto or mean")
    row = index.arrays.row_of(slide)
    if row is not None:
        proto_vec = index.arrays.slide_vector(index.catalog, row, "slides")
        query_vec = proto_vec if mode == "proto" else index.arrays.slide_vector(index.catalog, row, "slides_mean")
    elif is_file(slide):
        if exclude_same:
            raise QueryError("--exclude-same needs an indexed slide_id (a new slide file has no metadata)")
        emb = embed_new_slide(index, Path(slide))
        proto_vec = emb.slide_vector
        query_vec = proto_vec if mode == "proto" else emb.mean_vector
    else:
        shown = repr(str(slide)[:80]) + ("..." if len(str(slide)) > 80 else "")
        raise QueryError(f"unknown slide {shown}: not a slide_id of this index nor a slide file")
    allowed = index.catalog.allowed_slide_rows(where, exclude_row=row if exclude_same else None, exclude_same=exclude_same)
    name = "slides" if mode == "proto" else "slides_mean"
    sims, rows = vi.search(index.catalog.faiss(name), query_vec[None], k, allowed)
    found = rows[0] >= 0
    hit_rows, hit_sims = rows[0][found], sims[0][found]
    hits = build_hits(index.arrays, hit_rows, hit_sims, *explain_pairs(index, proto_vec, hit_rows))
    return SearchResult("slide", str(slide), hits, {"mode": mode, "exclude_same": exclude_same})


def embed_new_slide(index, path: Path):
    """A slide file that is not in the index, encoded and aggregated as the index would (not added to it)."""
    from indexer.aggregation.aggregate import AggregationConfig, aggregate_slide
    from indexer.ingestion.encode import encode_slide
    from indexer.ingestion.run import IndexConfig
    from indexer.tiles.tiling import TilingConfig

    m = index.catalog.manifest
    tiling = {k: v for k, v in m["tiling"].items() if k != "max_patches"}
    config = IndexConfig(tiling=TilingConfig(**tiling), max_patches=m["tiling"].get("max_patches"), num_workers=0)
    staged = encode_slide(path, {"slide_id": path.stem}, config, index.encoder)
    return aggregate_slide(staged.features.astype(np.float32), index.arrays.prototypes, AggregationConfig(**m["aggregation"]))


def search_patch(index, image, k: int = 10, where: str | None = None, exclude_same: str | None = None) -> SearchResult:
    """Slides containing tissue like ``image``: an image path, a PIL image, or ``SLIDE_ID@x,y,w,h``.

    Args:
        exclude_same: for a region query, a column (e.g. patient_id, or slide_id for the region's slide
            only): drop the region's slide and every slide sharing its value.
    """
    check_k(k)
    label = image if isinstance(image, str) else getattr(image, "filename", "image")
    q, region_row = patch_vector(index, image)
    if exclude_same and region_row is None:
        raise QueryError("--exclude-same needs a region of an indexed slide (SLIDE_ID@x,y,w,h) as the query")
    allowed = index.catalog.allowed_slide_rows(where, exclude_row=region_row if exclude_same else None,
                                               exclude_same=exclude_same)
    sims, ids = nearest_patches(index, q, k, allowed)
    slides = index.arrays.patch_slide[ids]
    rows, score = group_top_m(slides, sims, TOP_M)
    votes = np.bincount(np.searchsorted(rows, slides), weights=sims, minlength=len(rows))
    top = np.lexsort((rows, -votes, -np.round(score, TIE_DECIMALS)))[:k]
    which, entries = first_m_per_group(slides, rows[top], EXPLAIN)
    patch_protos = index.arrays.patch_proto[ids[entries]]
    first = np.sort(np.unique(which * index.arrays.n_prototypes + patch_protos, return_index=True)[1])
    protos = (which[first], patch_protos[first], sims[entries][first])  # each shown patch's prototype, once
    hits = build_hits(index.arrays, rows[top], score[top], protos, (which, ids[entries], sims[entries]))
    return SearchResult("patch", str(label), hits, {"top_m": TOP_M, "candidates": int(len(ids))})


def patch_vector(index, image) -> tuple[np.ndarray, int | None]:
    """The embedding (d,) of a query patch (as ``search_patch`` takes it) and its slide_row when it is a region."""
    from retrieval.query.parse import load_query_image, parse_region, read_region_image

    row = None
    if isinstance(image, (str, Path)):
        region = parse_region(str(image))
        if region is not None:
            row = index.arrays.row_of(region.slide_id)
            if row is None:
                raise QueryError(f"unknown slide {region.slide_id!r} in region query")
            meta = index.arrays.metadata[row]
            image = read_region_image(meta["path"], meta["mpp"], region, index.catalog.manifest["tiling"]["magnification"])
        else:
            image = load_query_image(image)
    return index.encoder.encode_images([image])[0], row


def is_file(text: str) -> bool:
    """Whether ``text`` names an existing file (False for names the OS cannot even look up)."""
    try:
        return Path(text).is_file()
    except (OSError, ValueError):
        return False


def check_k(k: int) -> None:
    """A QueryError unless at least one hit is asked for."""
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")
