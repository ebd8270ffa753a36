"""The text query pipeline, flowing one way: parse → sources → fuse → explain → results.

1. parse: validate ``k``, the text and ``source``; the slide filter (``where``) and the report attribute
   filters (``has``) become the allowed slide rows; the text is embedded with its knowledge-bank expansion
   (``parse.embed_text_query``);
2. sources: the image vectors (``image.search_text_vector``) and the reports (``report_search.ReportEvidence``
   over ``report_source.ReportSource``: lexical and dense views of each report);
3. fuse: ``fuse.rrf`` of the image ranking and the report views' rankings (``source="both"``), or the report scores alone
   (``source="report"``: slides with no report follow, contradicting ones come last); ``fuse.ranked`` orders;
4. explain and results: each hit keeps its image explanation and gets its report evidence.

Without reports (or with ``source="image"``), the image source answers alone.
"""

from __future__ import annotations

from itertools import islice
from typing import Any, Iterable

import numpy as np

from indexer.models.encoders import random_weights
from indexer.errors import QueryError
from retrieval.query import image as image_source
from retrieval.query.fuse import RRF_K, ranked, rrf
from retrieval.query.options import SOURCES
from retrieval.query.report_search import REPORT_DEPTH, ReportEvidence
from retrieval.query.results import SearchHit, SearchResult

IMAGE_DEPTH = 30  # image hits fetched per requested hit, at least


def search_text(index, query: str, k: int = 10, where: str | None = None, expand: bool = True,
                source: str | None = None, has: Iterable[str] = ()) -> SearchResult:
    """Slides matching a free-text description over an ``OpenIndex``: ``source`` image, report or both
    (None: both when the index has reports); ``has``: report attribute filters (``X``, ``not X``, ``maybe X``)."""
    if wants_reports(index.catalog, source, has):
        return search_with_reports(index, query, k, where, expand, source, has)
    q, details = text_vector(index, query, where, expand)
    return image_source.search_text_vector(index, q, k, where, query=query, details=details)


def text_vector(index, query: str, where: str | None = None, expand: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """The unit query vector (d,) of a text and how it was built; a bad ``where`` fails before the model loads."""
    from retrieval.query.parse import embed_text_query

    if not (query or "").strip():
        raise QueryError("empty text query")
    index.catalog.allowed_slide_rows(where)  # the result is cached for the search that follows
    return embed_text_query(index.encoder, query, index.bank, expand)


def wants_reports(catalog, source: str | None, has: Iterable[str]) -> bool:
    """Whether a text search takes report evidence (default: yes when the index has reports)."""
    if source is not None and source not in SOURCES:
        raise QueryError(f"unknown --source {source!r}: use image, report or both")
    has_reports = catalog.snapshot.version.reports is not None
    if source in ("report", "both") and not has_reports:
        raise QueryError(f"--source {source}: this index has no reports (index them with --reports FOLDER|COLUMN)")
    return bool(list(has)) or (source != "image" and has_reports)


def default_source(index) -> str:
    """``both``; ``report`` where the index has reports and its encoder has random weights (``tiny``), whose text
    tower would only add noise."""
    if index.report_index.available and random_weights(index.catalog.manifest.get("encoder") or {}):
        return "report"
    return "both"


def search_with_reports(index, query: str, k: int, where: str | None, expand: bool, source: str | None,
                        has: Iterable[str] = ()) -> SearchResult:
    """Text → slide with report evidence: ``source`` image, report or both (None: :func:`default_source`). Both:
    reciprocal rank fusion of the image ranking and the report source's lexical and dense rankings of the reports
    that bear on the query (``ReportEvidence.view_scores``)."""
    has, source = list(has), source or default_source(index)
    image_source.check_k(k)
    if not (query or "").strip():
        raise QueryError("empty text query")
    reports = index.report_index
    live = index.arrays.ids
    allowed = index.catalog.allowed_slide_rows(where)
    if has:
        rows = reports.slide_rows_with(has, index.bank, live)
        allowed = rows if allowed is None else np.intersect1d(allowed, rows)
    details: dict[str, Any] = {"source": source, "has": has}
    image_hits: dict[int, SearchHit] = {}
    if source in ("image", "both"):
        q, qd = text_vector(index, query, where, expand)
        depth = min(len(live), max(k * 3, IMAGE_DEPTH))
        image = image_source.search_text_vector(index, q, depth, where, query=query, details=qd, allowed=allowed)
        image_hits = {h.slide_row: h for h in image.hits}
        details.update(image.details)
    evidence = ReportEvidence(reports, query, live, allowed) if source in ("report", "both") and reports.available \
        else None
    if evidence is not None:
        details["query_attributes"] = reports.query_attributes(query, index.bank)
    if source == "report":
        score = evidence.slide_scores(max(k, REPORT_DEPTH)) if evidence else {}
        details["fusion"] = {"method": "report", "lists": ["lexical", "dense"]}
    else:
        lists = {"image": {row: hit.score for row, hit in image_hits.items()}}
        if evidence is not None:
            lists.update((view, evidence.view_scores(view, REPORT_DEPTH)) for view in ("lexical", "dense"))
        score = rrf(lists, evidence.contradicted if evidence else set())
        details["fusion"] = {**details.get("fusion", {}), "method": "rrf", "rrf_k": RRF_K, "lists": list(lists)}
    if len(score) < k:  # fewer slides with evidence than asked: the rest score 0, above contradicted ones
        pool = sorted(live.values()) if allowed is None else allowed.tolist()
        score.update((int(r), 0.0) for r in islice((r for r in pool if int(r) not in score), k))
    hits = []
    for rank, row in enumerate(ranked(score, k), 1):
        base = image_hits.get(row)
        meta = index.arrays.metadata[row]
        report = evidence.explain(row, image_hits) if evidence is not None else None
        hits.append(SearchHit(rank, meta["slide_id"], row, float(score[row]), meta,
                              base.prototypes if base else (), base.patches if base else (), report))
    return SearchResult("text", query, tuple(hits), details)
