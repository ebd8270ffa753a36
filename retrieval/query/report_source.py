"""The report source of a text query: every indexed report scored at once, from what the index stored.

A report's score fuses two report-level views (weights and pool tuned on the tune half of the real-report
benchmark, ``benchmarks/reports_real.py``):

- lexical: BM25 of the query's polarity-tagged words against the report's (``indexer/reports/lexical.py``),
  divided by the best report's BM25 (a long query: its LONG_TERMS rarest words);
- dense: cosine of the query to the report vector (the report model over the report text), min-max scaled
  between the POOL-th best report and the best one (reports below the POOL-th count 0).

``score = w·lexical + (1 − w)·dense``, w = W_SHORT for a short query (≤ SHORT_WORDS words kept) and W_LONG
for a longer one (a report pasted as the query). Polarity: a short query asserts its findings ("necrosis":
necrosis affirmed; "no necrosis": necrosis negated); a report that states an asserted finding only with the
other polarity contradicts the query and drops below every report that does not (score − 2); one that states
each asserted finding it names both ways is mixed evidence (score − 0.5). A long query
asserts nothing: a report states some findings and denies others, and its tagged words already match a
report that denies the same things. All of it is numpy over arrays read once; no report text is parsed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from indexer.errors import QueryError
from indexer.reports.lexical import stored_spans, tagged_tokens, top_k, untagged

SHORT_WORDS = 8
W_SHORT, W_LONG = 0.6, 0.4  # tuned: benchmarks/reports_real.py --tune (grid 0.2-0.8 × pool 10-300)
POOL = 100
LONG_TERMS = 64  # a long query's BM25 uses its LONG_TERMS rarest words: common words cost the most, weigh the least
CONTRADICTS = -2.0
MIXED = -0.5


@dataclass
class ReportQuery:
    """A text query as the report source reads it: tagged words, whether it is short, its vector."""

    text: str
    tokens: list[str]
    short: bool
    vector: np.ndarray = field(repr=False)
    idf: dict[str, float] = field(repr=False)  # each distinct word's log(1 + reports / reports with it)

    @property
    def asserted(self) -> list[str]:
        """The findings a short query asserts (tagged stems; uncertain ones assert nothing)."""
        return list(dict.fromkeys(t for t in self.tokens if not t.startswith("unc_"))) if self.short else []


@dataclass
class ReportScores:
    """Scores of every report for one query (arrays indexed by report row)."""

    lexical: np.ndarray
    dense: np.ndarray
    fused: np.ndarray
    contradicts: np.ndarray  # bool


class ReportSource:
    """Scores reports for text queries over one version's report tables (``ReportFiles``).

    Args:
        files: the version's report tables.
        load_model: called once (in the background after :meth:`warm`) to load the report model.
    """

    def __init__(self, files, load_model):
        self.files = files
        self._load_model = load_model
        self._lock = threading.Lock()
        self._model = None

    # -- loading ---------------------------------------------------------------------------
    def warm(self) -> threading.Thread:
        """Load the model and the arrays in a background thread (a query meanwhile waits for it)."""
        thread = threading.Thread(target=self.ready, name="report-warm", daemon=True)
        thread.start()
        return thread

    def ready(self) -> None:
        """Load everything a query needs now."""
        _ = self.model, self.vectors, self.files.lexical, self.report_slide, self._sentences

    @property
    def model(self):
        with self._lock:
            if self._model is None:
                self._model = self._load_model()
            return self._model

    @cached_property
    def vectors(self) -> np.ndarray:
        """(reports, dim) float32 in memory (stored float16)."""
        return np.asarray(self.files.vectors, np.float32)

    @cached_property
    def report_slide(self) -> np.ndarray:
        """slide_id of each report row."""
        return np.asarray(self.files.reports.column("slide_id").to_pylist(), object)

    @cached_property
    def _sentences(self):
        """(first sentence row of each report, sentence texts, sentence tagged words) as Arrow arrays."""
        first = self.files.reports.column("first_sentence").to_numpy()
        sentences = self.files.sentences
        return first, sentences.column("text").combine_chunks(), sentences.column("tokens").combine_chunks()

    def slide_rows(self, live: dict[str, int]) -> np.ndarray:
        """slide_row of each report row (−1: its slide is not in this version)."""
        cache = self.__dict__.setdefault("_slide_rows", {})
        if id(live) not in cache:
            cache.clear()
            cache[id(live)] = (live, np.asarray([live.get(s, -1) for s in self.report_slide], np.int64))
        return cache[id(live)][1]

    # -- a query ---------------------------------------------------------------------------
    def parse(self, text: str) -> ReportQuery:
        """Tag a query's words (its own negation scopes) and embed it."""
        if not (text or "").strip():
            raise QueryError("empty text query")
        tokens = tagged_tokens(text)
        return ReportQuery(text, tokens, len(tokens) <= SHORT_WORDS, self.model.encode([text])[0], self.idf(tokens))

    def idf(self, tokens: list[str]) -> dict[str, float]:
        """log(1 + reports / reports with the word) of each distinct word (a word in no report: as in one)."""
        lexical, distinct = self.files.lexical, list(dict.fromkeys(tokens))
        ids = np.asarray([lexical.vocab.get(t, -1) for t in distinct], np.int64)
        df = np.where(ids >= 0, lexical.indptr[ids + 1] - lexical.indptr[ids], 0) if len(ids) else ids
        return dict(zip(distinct, np.log1p(lexical.n / np.maximum(1, df)).tolist()))

    def score(self, query: ReportQuery, mask: np.ndarray | None = None, w: float | None = None,
              pool: int | None = None) -> ReportScores:
        """Scores of every report (``mask``: reports allowed; the others score −inf)."""
        n = self.files.lexical.n
        lexical = self.files.lexical.scores(query.tokens if query.short else self.rarest(query, LONG_TERMS))
        dense = self.vectors @ query.vector.astype(np.float32) if n else np.zeros(0, np.float32)
        usable = np.ones(n, bool) if mask is None else mask
        fused = np.full(n, -np.inf, np.float32)
        if usable.any():
            fused[usable] = combine(lexical[usable], dense[usable],
                                    (W_SHORT if query.short else W_LONG) if w is None else w, POOL if pool is None else pool)
        contradicts, mixed = self.polarity(query)
        fused[contradicts & usable] += CONTRADICTS
        fused[mixed & usable] += MIXED
        return ReportScores(lexical, dense, fused, contradicts)

    def rarest(self, query: ReportQuery, keep: int) -> list[str]:
        """The query's words (with repeats) restricted to the ``keep`` distinct ones found in fewest reports."""
        vocab = self.files.lexical.vocab
        kept = set(sorted((t for t in query.idf if t in vocab), key=lambda t: (-query.idf[t], t))[:keep])
        return [t for t in query.tokens if t in kept]

    def polarity(self, query: ReportQuery) -> tuple[np.ndarray, np.ndarray]:
        """Reports that contradict a short query (they state an asserted finding only with the other
        polarity), and reports that are mixed (every asserted finding they state, they state both ways)."""
        lexical = self.files.lexical
        contradicts = np.zeros(lexical.n, bool)
        stated, both = np.zeros(lexical.n, np.int32), np.zeros(lexical.n, np.int32)
        for token in query.asserted:
            stem = untagged(token)
            same, other = np.zeros(lexical.n, bool), np.zeros(lexical.n, bool)
            same[lexical.documents_with(token)] = True
            other[lexical.documents_with("neg_" + stem if token == stem else stem)] = True
            contradicts |= other & ~same
            stated += same | other
            both += same & other
        return contradicts, (stated > 0) & (both == stated) & ~contradicts

    def best_sentence(self, report_row: int, query: ReportQuery) -> dict:
        """The report's sentence sharing the most (idf-weighted) tagged words with the query, and the
        character spans of those words in it (the first sentence when none shares any)."""
        first, texts, tokens = self._sentences
        start = int(first[report_row])
        stop = int(first[report_row + 1]) if report_row + 1 < len(first) else len(texts)
        idf = query.idf
        words = [w.split() for w in tokens.slice(start, stop - start).to_pylist()]
        weights = [sum(map(idf.__getitem__, idf.keys() & w)) for w in words]
        best = int(np.argmax(weights)) if weights else 0
        text = texts[start + best].as_py() if start + best < len(texts) else ""
        spans = [[a, b] for t, a, b in stored_spans(text, words[best] if words else []) if t in idf]
        return {"sentence": text, "highlights": spans, "sentence_row": start + best,
                "via": "lexical" if weights and max(weights) > 0 else "dense"}

    def top(self, scores: ReportScores, k: int) -> np.ndarray:
        """The k best report rows (allowed ones only), best first."""
        rows = top_k(scores.fused, k)
        return rows[np.isfinite(scores.fused[rows])]


def combine(lexical: np.ndarray, dense: np.ndarray, w: float, pool: int) -> np.ndarray:
    """w·(BM25 / best BM25) + (1 − w)·(cosine min-max scaled between the pool-th best and the best, floored at 0).

    >>> combine(np.array([2.0, 1.0, 0.0]), np.array([0.9, 0.5, 0.1]), 0.5, 2).round(3).tolist()
    [1.0, 0.25, 0.0]
    """
    top = float(lexical.max()) if len(lexical) else 0.0
    lex = lexical / top if top > 0 else np.zeros_like(lexical)
    if len(dense):
        best = float(dense.max())
        floor = float(np.partition(dense, len(dense) - min(pool, len(dense)))[len(dense) - min(pool, len(dense))])
        den = np.clip((dense - floor) / (best - floor), 0, 1) if best > floor else np.ones_like(dense)
    else:
        den = dense
    return (w * lex + (1 - w) * den).astype(np.float32)
