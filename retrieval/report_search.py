"""Report evidence for text queries: BM25 and dense search over report sentences, negation-aware, fused with
the image evidence by reciprocal rank fusion; attribute filters (``--has``). Report → slide search is in
``retrieval/report_to_slide.py``.

Fusion: ``score = Σ_lists 1 / (RRF_K + rank)`` over the image ranking (the current text scoring), the report
BM25 ranking and the report dense ranking (a slide's rank in a report list is that of its best sentence).
A sentence whose query terms or attributes it states with the other polarity ("no necrosis" for a query
"necrosis") is no evidence, and its slide loses one top-rank share (``-1 / (RRF_K + 1)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from typing import Any, Iterable

import numpy as np

from indexer.errors import QueryError
from indexer.reports.negation import AFFIRMED, NEGATED, affirmed_text, polarity_at, scopes
from retrieval.results import SearchResult

RRF_K = 60
SOURCES = ("image", "report", "both")
SENTENCE_CANDIDATES = 200  # best sentences per report list
IMAGE_DEPTH = 30  # image hits fetched per requested hit, at least


@dataclass(frozen=True)
class QueryConcepts:
    """What a text query asks for: stems and bank attributes, each with the polarity it asks."""

    stems: dict[str, str]
    attributes: dict[str, str]


class ReportIndex:
    """The report tables of one open index version (None-safe: ``available`` says whether there are any)."""

    def __init__(self, catalog):
        from indexer.reports.store import ReportFiles

        rel = catalog.snapshot.version.reports
        self.files = ReportFiles(catalog.root / rel) if rel else None

    @property
    def available(self) -> bool:
        return self.files is not None and self.files.info["sentences"] > 0

    @cached_property
    def model(self):
        from indexer.reports.model import load_report_model

        info = self.files.info
        model = load_report_model(None if info["model"] == "all-MiniLM-L6-v2" else info["model_path"])
        if model.sha256 != info["model_sha256"]:
            raise QueryError(f"the report model {info['model']} changed since its reports were indexed; "
                             "re-index them (slidesearch metadata INDEX --reports ...)")
        return model

    @cached_property
    def sentence_slide(self) -> np.ndarray:
        return np.asarray(self.files.sentences.column("slide_id").to_pylist(), object)

    @cached_property
    def texts(self) -> list[str]:
        return self.files.sentences.column("text").to_pylist()

    @cached_property
    def sentence_attributes(self) -> dict[int, dict[str, str]]:
        """sentence_row → attribute → polarity (affirmed wins when a sentence states it both ways)."""
        out: dict[int, dict[str, str]] = {}
        table = self.files.attributes.select(["sentence_row", "attribute", "polarity"]).to_pylist()
        for row in table:
            slot = out.setdefault(row["sentence_row"], {})
            if slot.get(row["attribute"]) != AFFIRMED:
                slot[row["attribute"]] = row["polarity"]
        return out

    def matcher(self, bank):
        from indexer.reports.attributes import AttributeMatcher, bank_terms

        from indexer.reports.store import PHRASES

        cache = self.__dict__.setdefault("_matchers", {})
        if id(bank) not in cache:
            stored = self.files.folder / PHRASES
            known = np.load(stored) if bank.sha256 == self.files.info["bank_sha256"] and stored.is_file() else None
            cache[id(bank)] = AttributeMatcher(bank_terms(bank), self.model, known)
        return cache[id(bank)]

    def concepts(self, query: str, bank) -> QueryConcepts:
        """The query's content stems and bank attributes with their polarity ("no necrosis": necrosis negated)."""
        from indexer.reports.lexical import stem_spans, query_terms
        from indexer.reports.sentences import Span

        found = scopes(query)
        stems = {}
        for start, end in stem_spans(query, query_terms(query)):
            stems[_stem(query[start:end])] = polarity_at(query, start, end, found)[0]
        attributes = {}
        if bank is not None:
            for f in self.matcher(bank).match([Span(0, len(query), query)])[0]:
                attributes[f.attribute] = f.polarity
        return QueryConcepts(stems, attributes)

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

    def rank(self, query: str, concepts: QueryConcepts, live: dict[str, int], allowed: np.ndarray | None
             ) -> tuple[dict[str, list], dict[int, dict[str, Any]], set[int]]:
        """Report rankings of slide rows: {"lexical": rows, "dense": rows}, the best sentence of each row,
        and the rows whose report contradicts the query."""
        from indexer.reports.lexical import query_terms

        allowed_set = None if allowed is None else set(allowed.tolist())
        lex_ids, lex_scores = self.files.lexical.search(affirmed_text(query) if affirmed_text(query).strip() else query,
                                                        SENTENCE_CANDIDATES)
        q = self.model.encode([query])[0]
        dense = _dense_scores(self.files.embeddings, q)
        dense_ids = np.argsort(-dense, kind="stable")[:SENTENCE_CANDIDATES]
        terms = query_terms(query)
        best: dict[int, dict[str, Any]] = {}
        contradicted: set[int] = set()
        lists: dict[str, list] = {}
        for name, ids, scores in (("lexical", lex_ids, lex_scores), ("dense", dense_ids, dense[dense_ids])):
            ranked: list[int] = []
            for sid, score in zip(ids.tolist(), scores.tolist()):
                row = live.get(self.sentence_slide[sid])
                if row is None or (allowed_set is not None and row not in allowed_set):
                    continue
                verdict, spans = self._judge(sid, concepts, terms)
                if verdict == "contradicts":
                    contradicted.add(row)
                    continue
                if row in ranked or (name == "dense" and verdict == "unrelated" and score < 0.3):
                    continue
                ranked.append(row)
                entry = best.get(row)
                if entry is None or (name == "lexical" and entry["via"] != "lexical"):
                    best[row] = {"sentence": self.texts[sid], "highlights": spans, "via": name,
                                 "score": round(float(score), 4), "sentence_row": int(sid)}
            lists[name] = ranked
        contradicted -= {r for r in best}  # a report that also supports the query is not demoted
        return lists, best, contradicted

    def _judge(self, sid: int, concepts: QueryConcepts, terms: set[str]) -> tuple[str, list[list[int]]]:
        """Whether sentence ``sid`` supports, contradicts or is unrelated to the query, and what to highlight."""
        from indexer.reports.lexical import stem_spans

        text = self.texts[sid]
        found = scopes(text)
        spans, verdict = [], "unrelated"
        for start, end in stem_spans(text, terms):
            polarity = polarity_at(text, start, end, found)[0]
            asked = concepts.stems.get(_stem(text[start:end]), AFFIRMED)
            if polarity != asked:
                return "contradicts", []
            spans.append([start, end])
            verdict = "supports"
        stated = self.sentence_attributes.get(sid, {})
        for attribute, asked in concepts.attributes.items():
            if attribute in stated:
                if stated[attribute] != asked:
                    return "contradicts", []
                verdict = "supports"
        return verdict, spans


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
    reports = searcher.report_index
    allowed = searcher.catalog.allowed_slide_rows(where)
    if has:
        rows = reports.slide_rows_with(has, searcher.bank, searcher.arrays.ids)
        allowed = rows if allowed is None else np.intersect1d(allowed, rows)
    lists: dict[str, list[int]] = {}
    image_hits: dict[int, Any] = {}
    details: dict[str, Any] = {"source": source, "has": has}
    if source in ("image", "both"):
        q, qd = searcher.text_vector(query, where, expand)
        depth = min(len(searcher.arrays.ids), max(k * 3, IMAGE_DEPTH))
        image = searcher.search_text_vector(q, depth, where, query=query, details=qd, allowed=allowed)
        image_hits = {h.slide_row: h for h in image.hits}
        lists["image"] = list(image_hits)
        details.update(image.details)
    best, contradicted = {}, set()
    if source in ("report", "both") and reports.available:
        concepts = reports.concepts(query, searcher.bank)
        report_lists, best, contradicted = reports.rank(query, concepts, searcher.arrays.ids, allowed)
        lists.update(report_lists)
        details["query_attributes"] = concepts.attributes
    score: dict[int, float] = {}
    for ranked in lists.values():
        for rank, row in enumerate(ranked, 1):
            score[row] = score.get(row, 0.0) + 1.0 / (RRF_K + rank)
    for row in contradicted:
        score[row] = score.get(row, 0.0) - 1.0 / (RRF_K + 1)
    ranks = {name: {row: r for r, row in enumerate(ranked, 1)} for name, ranked in lists.items()}
    if len(score) < k:  # fewer slides with evidence than asked: the rest score 0, above contradicted ones
        pool = sorted(searcher.arrays.ids.values()) if allowed is None else allowed.tolist()
        score.update((int(r), 0.0) for r in islice((r for r in pool if int(r) not in score), k))
    order = sorted(score, key=lambda r: (-round(score[r], 9), r))[:k]
    details["fusion"] = {**details.get("fusion", {}), "method": "rrf", "rrf_k": RRF_K, "lists": list(lists)}
    return SearchResult("text", query, _hits(searcher, order, score, image_hits, best, ranks, contradicted), details)


def _hits(searcher, order, score, image_hits, best, ranks, contradicted):
    from retrieval.results import SearchHit

    empty = (np.zeros(0, np.int64),) * 3
    bare = {h.slide_row: h for h in searcher._hits(np.asarray([r for r in order if r not in image_hits], np.int64),
                                                   np.zeros(sum(r not in image_hits for r in order)), empty, empty)}
    hits = []
    for rank, row in enumerate(order, 1):
        base = image_hits.get(row) or bare[row]
        report = dict(best[row]) if row in best else None
        if row in contradicted:
            report = {"contradicts": True}
        if report is not None:
            report["ranks"] = {name: found[row] for name, found in ranks.items() if row in found}
        hits.append(SearchHit(rank, base.slide_id, row, float(score[row]), base.metadata, base.prototypes,
                              base.patches, report))
    return tuple(hits)


def _dense_scores(embeddings: np.ndarray, q: np.ndarray, chunk: int = 65536) -> np.ndarray:
    out = np.empty(len(embeddings), np.float32)
    for start in range(0, len(embeddings), chunk):
        out[start:start + chunk] = np.asarray(embeddings[start:start + chunk], np.float32) @ q
    return out


def _stem(word: str) -> str:
    from indexer.reports.lexical import _stemmer

    return _stemmer().stemWord(word.lower())
