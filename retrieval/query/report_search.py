"""The reports of an index as a source of the query pipeline: the report tables and attribute filters
(``--has``, ``ReportIndex``) and a text query's report evidence as slide rows (``ReportEvidence``, over
``report_source.py``). ``retrieval/query/text.py`` fuses it with the image evidence (``fuse.rrf``); report →
slide search is in ``retrieval/query/report_to_slide.py``.
"""

from __future__ import annotations

from functools import cached_property
from typing import Any, Iterable

import numpy as np

from indexer.errors import QueryError
from indexer.reports.lexical import top_k
from indexer.reports.negation import AFFIRMED, NEGATED

REPORT_DEPTH = 200  # report-ranked slides fused with the image ranking (source both)
DENSE_RELATED = 0.3  # a report sharing no query word joins the dense list (source both) from this cosine up


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

    def view_scores(self, view: str, depth: int) -> dict[int, float]:
        """slide_row → one view's score of the ``depth`` best allowed reports that bear on the query, best first:
        ``lexical`` those with BM25 evidence, ``dense`` those too and any at cosine ≥ ``DENSE_RELATED``."""
        related = self.scores.lexical > 0
        if view == "dense":
            related |= self.scores.dense >= DENSE_RELATED
        values = np.where(self.mask & related, getattr(self.scores, view), -np.inf)
        rows = top_k(values, depth)
        out: dict[int, float] = {}
        for r in rows[np.isfinite(values[rows])]:
            out.setdefault(int(self.slide_of[r]), float(values[r]))
        return out

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
