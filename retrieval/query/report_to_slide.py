"""Report → slide (TITAN's direction): rank slides by how their images show the attributes a free report affirms."""

from __future__ import annotations

from typing import Iterable

import numpy as np

from indexer.errors import QueryError
from indexer.reports.negation import AFFIRMED
from retrieval.query import image as image_source
from retrieval.query.fuse import mean_of_lists, ranked
from retrieval.query.results import SearchHit, SearchResult


def search_report(searcher, text: str, k: int = 10, where: str | None = None, has: Iterable[str] = ()) -> SearchResult:
    """Report → slide (TITAN's direction): slides whose images show the attributes a free report text affirms.

    Each affirmed attribute is embedded with the image-text model's text tower (as a text query, without
    expansion) and scored against every allowed slide by the image scoring; a slide's score is the mean over
    the attributes (a slide outside an attribute's top hits takes that list's lowest score). Negated and
    uncertain attributes are left out. Slides without a report rank like any other.
    """
    from indexer.reports.attributes import AttributeMatcher, bank_terms
    from indexer.reports.sentences import split_sentences
    from retrieval.query.parse import embed_text_query

    if not (text or "").strip():
        raise QueryError("empty report text")
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")
    bank = searcher.bank
    if bank is None:
        raise QueryError("report search needs the index's knowledge bank, which is missing or changed")
    allowed = searcher.catalog.allowed_slide_rows(where)
    if list(has):
        rows = searcher.report_index.slide_rows_with(has, bank, searcher.arrays.ids)
        allowed = rows if allowed is None else np.intersect1d(allowed, rows)
    from indexer.reports.model import load_report_model

    reports = searcher.report_index
    matcher = reports.matcher(bank) if reports.available else AttributeMatcher(bank_terms(bank), load_report_model())
    findings = [f for sentence in matcher.match(split_sentences(text)) for f in sentence]
    affirmed = list(dict.fromkeys(f.attribute for f in findings if f.polarity == AFFIRMED))
    left_out = sorted({f"{f.polarity}: {f.attribute}" for f in findings if f.attribute not in affirmed})
    if not affirmed:
        raise QueryError("the report affirms no attribute of the index's knowledge bank"
                         + (f" (left out: {'; '.join(left_out)})" if left_out else ""))
    n = len(searcher.arrays.ids)
    depth = min(n, max(k * 5, 50))
    lists: dict[str, dict[int, float]] = {}
    for attribute in affirmed:
        q, _ = embed_text_query(searcher.encoder, attribute, bank, expand=False)
        result = image_source.search_text_vector(searcher, q, depth, where, query=attribute, allowed=allowed)
        lists[attribute] = {h.slide_row: h.score for h in result.hits}
    score, per = mean_of_lists(lists)
    order = ranked(score, k)
    meta = searcher.arrays.metadata
    hits = tuple(SearchHit(rank, meta[row]["slide_id"], row, score[row], meta[row], report={"attributes": per[row]})
                 for rank, row in enumerate(order, 1))
    details = {"attributes": affirmed, "left_out": left_out, "scoring": "mean image text score over attributes"}
    return SearchResult("report", text[:200], hits, details)
