"""Slide spaces a slide or case query can search: ``proto`` (ProAlign slide vectors), ``mean`` (mean-pool
baseline) and the slide-encoder spaces imported with ``index --slide-features`` (``indexer/aggregation/slide_features.py``)."""

from __future__ import annotations

import numpy as np

from indexer.errors import QueryError

BUILTIN = {"proto": "slides", "mean": "slides_mean"}


def space_names(catalog) -> list[str]:
    """Every space of an index: the built-in two and the imported slide-encoder spaces."""
    return [*BUILTIN, *imported_spaces(catalog)]


def imported_spaces(catalog) -> list[str]:
    """Names of the slide-encoder spaces any live segment holds."""
    from indexer.aggregation.slide_features import segment_spaces

    return sorted({name for folder in catalog.snapshot.segment_dirs() for name in segment_spaces(folder)})


def space_vectors(searcher, space: str, rows: np.ndarray) -> np.ndarray:
    """Unit vectors (len(rows), dim) of slides ``rows`` in ``space``; zeros for a slide the space lacks."""
    if space in BUILTIN:
        return searcher.arrays.slide_vectors(searcher.catalog, np.asarray(rows, np.int64), BUILTIN[space])
    from indexer.aggregation.slide_features import read_space

    names = imported_spaces(searcher.catalog)
    if space not in names:
        raise QueryError(f"unknown slide space {space!r}: this index has {', '.join(space_names(searcher.catalog))}")
    return read_space(searcher.catalog.snapshot, space, np.asarray(rows, np.int64))


def search_space(searcher, slide: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                 space: str = "proto"):
    """Slide → slide search in any space; an imported space is searched exactly (flat inner product) and each
    hit explained by the ProAlign terms of the same pair (which prototypes the two slides share).

    Raises:
        QueryError: unknown space, or a slide that is not indexed (a slide encoder cannot embed a new file here).
    """
    from indexer import vectors as vi
    from retrieval.query.results import SearchResult

    if space in BUILTIN:
        return searcher.search_slide(slide, k=k, where=where, exclude_same=exclude_same, mode=space)
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")
    index, rows = space_index(searcher, space)
    row = searcher.arrays.row_of(slide)
    if row is None:
        raise QueryError(f"--space {space}: {str(slide)[:80]!r} is not an indexed slide_id (a slide-encoder space "
                         "holds imported embeddings only)")
    query = space_vectors(searcher, space, np.array([row]))[0]
    if not query.any():
        raise QueryError(f"slide {slide!r} has no embedding in space {space!r}")
    allowed = searcher.catalog.allowed_slide_rows(where, exclude_row=row if exclude_same else None,
                                                  exclude_same=exclude_same)
    sims, ids = vi.search(index, query[None], k, allowed)
    found = ids[0] >= 0
    hit_rows, hit_sims = ids[0][found], sims[0][found]
    proto = searcher.arrays.slide_vector(searcher.catalog, row, "slides")
    hits = searcher.slide_hits(hit_rows, hit_sims, proto)
    return SearchResult("slide", str(slide), hits, {"mode": space, "space": space, "exclude_same": exclude_same})


def space_index(searcher, space: str):
    """A flat inner-product FAISS index over the slides that have a vector in ``space`` (built once per searcher)."""
    cache = searcher.__dict__.setdefault("_space_indexes", {})
    if space not in cache:
        import faiss

        rows = np.asarray(sorted(searcher.arrays.ids.values()), np.int64)
        vectors = space_vectors(searcher, space, rows)
        has = vectors.any(axis=1)
        index = faiss.IndexIDMap2(faiss.IndexFlatIP(vectors.shape[1]))
        index.add_with_ids(np.ascontiguousarray(vectors[has]), rows[has])
        cache[space] = (index, rows[has])
    return cache[space]
