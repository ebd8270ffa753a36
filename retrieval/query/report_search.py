"""Report evidence for text queries: the report source (``report_source.py``) fused with the image evidence,
and attribute filters (``--has``). Report → slide search is in ``retrieval/query/report_to_slide.py``.

``source="report"``: slides in the order of their reports' fused score (``report_source.py``); slides with
no report follow, and slides whose report contradicts the query come last. ``source="both"``: reciprocal
rank fusion ``Σ_lists 1 / (RRF_K + rank)`` of the image ranking and the report ranking; a slide whose report
contradicts the query loses one top-rank share (``−1 / (RRF_K + 1)``).
"""

from __future__ import annotations

from functools import cached_property
from itertools import islice
from typing import Any, Iterable

import numpy as np

from indexer.errors import QueryError
from indexer.reports.negation import AFFIRMED, NEGATED
from retrieval.query.results import SearchHit, SearchResult

RRF_K = 60
SOURCES = ("image", "report", "both")
REPORT_DEPTH = 200  # report-ranked slides fused with the image ranking (source both)
IMAGE_DEPTH = 30  # image hits fetched per requested hit, at least


class ReportIndex:
    """The report tables of one open index version (None-safe: ``available`` says whether there are any)."""

    def __init__(self, catalog):
        from indexer.reports.store import ReportFiles

        rel = catalog.snapshot.version.reports
        self.files = ReportFiles(catalog.root / rel) if rel else None

    @property
    def available(self) -> bool:
        return self.files is not None and self.files.info["sentences"] > 0

    @classmethod
    def from_folder(cls, folder) -> "ReportIndex":
        """The report tables of a folder written by ``indexer/reports/store.py`` (no index around them)."""
        from indexer.reports.store import ReportFiles

        out = cls.__new__(cls)
        out.files = ReportFiles(folder)
        return out

    @cached_property
    def source(self):
        """The report source (``report_source.py``) over these tables."""
        from retrieval.query.report_source import ReportSource

        if not self.files.current:
            raise QueryError("this index's reports were indexed by an older slidesearch; re-index them "
                             "(slidesearch metadata INDEX --reports FOLDER|COLUMN)")
        return ReportSource(self.files, self._load_model)

    @property
    def model(self):
        return self.source.model

    def warm(self):
        """Load the report model and arrays in the background (no-op without current reports)."""
        if self.available and self.files.current:
            return self.source.warm()
        return None

    def _load_model(self):
        from indexer.reports.model import load_report_model

        info = self.files.info
        model = load_report_model(None if info["model"] == "all-MiniLM-L6-v2" else info["model_path"])
        if model.sha256 != info["model_sha256"]:
            raise QueryError(f"the report model {info['model']} changed since its reports were indexed; "
                             "re-index them (slidesearch metadata INDEX --reports ...)")
        return model

    def matcher(self, bank):
        from indexer.reports.attributes import AttributeMatcher, bank_terms
        from indexer.reports.store import PHRASES

        cache = self.__dict__.setdefault("_matchers", {})
        if id(bank) not in cache:
            stored = self.files.folder / PHRASES
            known = np.load(stored) if bank.sha256 == self.files.info["bank_sha256"] and stored.is_file() else None
            cache[id(bank)] = AttributeMatcher(bank_terms(bank), self.model, known)
        return cache[id(bank)]

    def query_attributes(self, query: str, bank) -> dict[str, str]:
        """The bank attributes a query names, with the polarity it asks ("no necrosis": necrosis negated)."""
        if bank is None:
            return {}
        return {f.attribute: f.polarity for f in self.matcher(bank).by_synonym(query)}

    def slide_rows_with(self, has: Iterable[str], bank, live: dict[str, int]) -> np.ndarray:
        """slide_rows whose report states every ``--has`` attribute with the asked polarity.

        ``X``: some sentence affirms X; ``not X``: some sentence negates X and none affirms it; ``maybe X``:
        some sentence makes X uncertain. X is an attribute name, or a bank synonym of one.
        """
        from indexer.reports.attributes import parse_attribute_query

        if not self.available:
            raise QueryError("--has needs indexed reports (slidesearch metadata INDEX --reports FOLDER|COLUMN)")
        table = self.files.attributes.select(["slide_id", "attribute", "polarity"]).to_pylist()
        names = {r["attribute"] for r in table}
        keep: set[str] | None = None
        for item in has:
            polarity, name = parse_attribute_query(item)
            name = self._resolve(name, names, bank, item)
            states: dict[str, set[str]] = {}
            for r in table:
                if r["attribute"] == name:
                    states.setdefault(r["slide_id"], set()).add(r["polarity"])
            chosen = {s for s, p in states.items() if polarity in p and (polarity != NEGATED or AFFIRMED not in p)}
            keep = chosen if keep is None else keep & chosen
        return np.asarray(sorted(live[s] for s in keep or () if s in live), np.int64)

    def _resolve(self, name: str, names: set[str], bank, item: str) -> str:
        if name in names:
            return name
        if bank is not None:
            disease = bank.find_disease(name)
            if disease is not None and disease.name.lower() in names | {disease.name.lower()}:
                return disease.name.lower()
            for proto in bank.prototypes:
                if proto.name.lower() == name:
                    return name
        shown = ", ".join(sorted(names)[:8])
        raise QueryError(f"--has {item!r}: no report states the attribute {name!r} "
                         f"(write X, 'not X' or 'maybe X'; attributes in the reports: {shown or 'none'})")

    def plain_ranking(self, query: str, kind: str) -> list[str]:
        """slide_ids ranked by one view alone, ``lexical`` (BM25 of untagged words) or ``dense``, no
        polarity handling: the ungated baseline the synthetic benchmark compares against."""
        from indexer.reports.lexical import untagged

        source = self.source
        q = source.parse(query)
        if kind == "lexical":
            q.tokens = [untagged(t) for t in q.tokens]
            scores = np.maximum(source.files.lexical.scores(q.tokens),
                                source.files.lexical.scores(["neg_" + t for t in q.tokens]))
        else:
            scores = source.vectors @ q.vector
        return source.report_slide[np.lexsort((np.arange(len(scores)), -scores))].tolist()


def wants_reports(catalog, source: str | None, has: Iterable[str]) -> bool:
    """Whether a text search takes report evidence (default: yes when the index has reports)."""
    if source is not None and source not in SOURCES:
        raise QueryError(f"unknown --source {source!r}: use image, report or both")
    has_reports = catalog.snapshot.version.reports is not None
    if source in ("report", "both") and not has_reports:
        raise QueryError(f"--source {source}: this index has no reports (index them with --reports FOLDER|COLUMN)")
    return bool(list(has)) or (source != "image" and has_reports)


def fused_text_search(searcher, query: str, k: int, where: str | None, expand: bool, source: str | None,
                      has: Iterable[str] = ()) -> SearchResult:
    """Text → slide with report evidence: ``source`` image, report or both (None: both)."""
    has, source = list(has), source or "both"
    if k < 1:
        raise QueryError(f"k must be at least 1 (got {k})")
    if not (query or "").strip():
        raise QueryError("empty text query")
    reports = searcher.report_index
    live = searcher.arrays.ids
    allowed = searcher.catalog.allowed_slide_rows(where)
    if has:
        rows = reports.slide_rows_with(has, searcher.bank, live)
        allowed = rows if allowed is None else np.intersect1d(allowed, rows)
    details: dict[str, Any] = {"source": source, "has": has}
    image_hits: dict[int, SearchHit] = {}
    if source in ("image", "both"):
        q, qd = searcher.text_vector(query, where, expand)
        depth = min(len(live), max(k * 3, IMAGE_DEPTH))
        image = searcher.search_text_vector(q, depth, where, query=query, details=qd, allowed=allowed)
        image_hits = {h.slide_row: h for h in image.hits}
        details.update(image.details)
    evidence = ReportEvidence(reports, query, live, allowed) if source in ("report", "both") and reports.available \
        else None
    if evidence is not None:
        details["query_attributes"] = reports.query_attributes(query, searcher.bank)
    if source == "report":
        score = evidence.slide_scores(max(k, REPORT_DEPTH)) if evidence else {}
        details["fusion"] = {"method": "report", "lists": ["lexical", "dense"]}
    else:
        lists = {"image": list(image_hits)}
        if evidence is not None:
            lists["report"] = list(evidence.slide_scores(REPORT_DEPTH))
        score = rrf(lists, evidence.contradicted if evidence else set())
        details["fusion"] = {**details.get("fusion", {}), "method": "rrf", "rrf_k": RRF_K, "lists": list(lists)}
    if len(score) < k:  # fewer slides with evidence than asked: the rest score 0, above contradicted ones
        pool = sorted(live.values()) if allowed is None else allowed.tolist()
        score.update((int(r), 0.0) for r in islice((r for r in pool if int(r) not in score), k))
    order = sorted(score, key=lambda r: (-round(score[r], 9), r))[:k]
    hits = []
    for rank, row in enumerate(order, 1):
        base = image_hits.get(row)
        meta = searcher.arrays.metadata[row]
        report = evidence.explain(row, image_hits) if evidence is not None else None
        hits.append(SearchHit(rank, meta["slide_id"], row, float(score[row]), meta,
                              base.prototypes if base else (), base.patches if base else (), report))
    return SearchResult("text", query, tuple(hits), details)


def rrf(lists: dict[str, list[int]], contradicted: set[int]) -> dict[int, float]:
    """Reciprocal rank fusion of ranked slide rows; a contradicted slide loses one top-rank share.

    >>> rrf({"a": [1, 2], "b": [2]}, {1})
    {1: 0.0, 2: 0.03252247488101534}
    """
    score: dict[int, float] = {}
    for ranked in lists.values():
        for rank, row in enumerate(ranked, 1):
            score[row] = score.get(row, 0.0) + 1.0 / (RRF_K + rank)
    for row in contradicted:
        score[row] = score.get(row, 0.0) - 1.0 / (RRF_K + 1)
    return score


class ReportEvidence:
    """The report source's answer to one query, as slide rows: scores, contradictions and explanations."""

    def __init__(self, reports: ReportIndex, query: str, live: dict[str, int], allowed: np.ndarray | None):
        self.source = reports.source
        self.query = self.source.parse(query)
        self.slide_of = self.source.slide_rows(live)
        mask = self.slide_of >= 0
        if allowed is not None:
            mask &= np.isin(self.slide_of, allowed)
        self.mask = mask
        self.scores = self.source.score(self.query, mask)
        self.contradicted = set(self.slide_of[self.scores.contradicts & mask].tolist())

    def slide_scores(self, depth: int) -> dict[int, float]:
        """slide_row → fused report score of the ``depth`` best allowed reports, best first."""
        rows = self.source.top(self.scores, depth)
        return {int(self.slide_of[r]): float(self.scores.fused[r]) for r in rows}

    def _allowed(self, name: str) -> np.ndarray:
        """One view's scores of the allowed reports (computed once per query)."""
        cache = self.__dict__.setdefault("_views", {})
        if name not in cache:
            values = getattr(self.scores, name)
            cache[name] = values if self.mask.all() else values[self.mask]
        return cache[name]

    def explain(self, slide_row: int, image_hits: dict) -> dict[str, Any] | None:
        """A hit's report evidence: its best sentence, highlights and ranks ({"contradicts": True} instead
        when its report contradicts the query); None when the slide has no report."""
        ranks = {"image": list(image_hits).index(slide_row) + 1} if slide_row in image_hits else {}
        found = np.flatnonzero(self.slide_of == slide_row)
        if not len(found):
            return None
        r = int(found[0])
        for name, values in (("lexical", self.scores.lexical), ("dense", self.scores.dense)):
            if name == "dense" or values[r] > 0:
                ranks[name] = int(np.count_nonzero(self._allowed(name) > values[r])) + 1
        if slide_row in self.contradicted:
            return {"contradicts": True, "ranks": {k: v for k, v in ranks.items() if k == "image"}}
        out = self.source.best_sentence(r, self.query)
        out["score"] = round(float(self.scores.fused[r]), 4)
        out["ranks"] = ranks
        return out
