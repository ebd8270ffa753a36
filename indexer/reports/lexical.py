"""Polarity-tagged words and BM25 over them (bm25s: sparse matrices, saved and memory-mapped).

A word is lower-cased and stemmed (English Snowball, English stop words dropped); a word inside a negated
scope becomes ``neg_<stem>`` and one inside an uncertain scope ``unc_<stem>`` (NegEx scopes, ``negation.py``),
so "no necrosis" never matches the query "necrosis" and "no necrosis" matches "negative for necrosis".
Words that only carry polarity ("no", "present", "identified", ...) are dropped: they are what the tags say.
Everything is computed once at index time; a query is tagged the same way.
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path

import numpy as np

from indexer.reports.negation import NEGATED, UNCERTAIN, Scope, scopes

_TOKEN = re.compile(r"(?u)\b\w\w+\b")
PREFIX = {NEGATED: "neg_", UNCERTAIN: "unc_"}
POLARITY_WORDS = frozenset({
    "no", "not", "without", "negative", "absent", "absence", "present", "presence", "identified", "seen",
    "noted", "evident", "detected", "found", "none", "lack", "lacks", "lacking", "devoid", "excluded", "nor",
    "neither", "never", "suspicious", "possible", "possibly", "probable", "probably", "questionable",
    "equivocal", "suspected", "likely", "cannot", "evidence",
})


@lru_cache(maxsize=1)
def stemmer():
    """The English Snowball stemmer (PyStemmer), shared."""
    import Stemmer

    return Stemmer.Stemmer("english")


@lru_cache(maxsize=1)
def _stopwords() -> frozenset[str]:
    from bm25s.stopwords import STOPWORDS_EN

    return frozenset(STOPWORDS_EN) | POLARITY_WORDS


def stem(word: str) -> str:
    """The stem of one word, as the index stores it (no polarity tag)."""
    return stemmer().stemWord(word.lower())


def tagged_tokens(text: str, found: list[Scope] | None = None) -> list[str]:
    """The polarity-tagged stems of one sentence (or short query), in order.

    >>> tagged_tokens("No necrosis; tumour necrosis is present.")
    ['neg_necrosi', 'tumour', 'necrosi']
    """
    return [t for t, _, _ in tagged_spans(text, found)]


def tagged_spans(text: str, found: list[Scope] | None = None) -> list[tuple[str, int, int]]:
    """(tagged stem, start, end) of each kept word of one sentence (or short query)."""
    found = scopes(text) if found is None else found
    kept = _kept_words(text)
    stems = stemmer().stemWords([w for w, _, _ in kept])
    out = []
    for s, (_, start, end) in zip(stems, kept):
        scope = next((x for x in found if x.start <= start < x.end), None) if found else None
        out.append((PREFIX[scope.polarity] + s if scope is not None else s, start, end))
    return out


def stored_spans(text: str, tokens: list[str]) -> list[tuple[str, int, int]]:
    """``tagged_spans`` of a sentence whose tagged words the index stored (``tokens``): no NegEx pass.

    >>> stored_spans("No necrosis.", ["neg_necrosi"])
    [('neg_necrosi', 3, 11)]
    """
    kept = _kept_words(text)
    if len(kept) != len(tokens):  # not this sentence's stored words: tag it again
        return tagged_spans(text)
    return [(t, start, end) for t, (_, start, end) in zip(tokens, kept)]


def _kept_words(text: str) -> list[tuple[str, int, int]]:
    """(lower-cased word, start, end) of each word that is not a stop or polarity word."""
    stop = _stopwords()
    return [(w, m.start(), m.end()) for m in _TOKEN.finditer(text) if (w := m.group(0).lower()) not in stop]


def untagged(token: str) -> str:
    """The stem of a tagged token."""
    return token[4:] if token[:4] in ("neg_", "unc_") else token


def build_lexical(docs: list[list[str]], folder: Path) -> None:
    """Index ``docs`` (one list of tagged tokens per document, ids in order) and save the index in ``folder``."""
    import bm25s

    folder.mkdir(parents=True, exist_ok=True)
    if docs:
        retriever = bm25s.BM25()
        retriever.index([d or [""] for d in docs], show_progress=False)
        retriever.save(str(folder))
    (folder / "count").write_text(f"{len(docs)}\n")


class LexicalIndex:
    """A saved BM25 index of ``n`` documents, scored a whole query at a time with numpy."""

    def __init__(self, folder: Path):
        import bm25s

        self.n = int((folder / "count").read_text())
        retriever = bm25s.BM25.load(str(folder), mmap=True) if self.n else None
        self.vocab: dict[str, int] = dict(retriever.vocab_dict) if retriever else {}
        scores = retriever.scores if retriever else {"data": [], "indices": [], "indptr": [0]}
        self.data, self.indices, self.indptr = scores["data"], scores["indices"], np.asarray(scores["indptr"])

    @property
    def matrix(self):
        """The BM25 weights as a scipy CSC matrix (documents × vocabulary), built once."""
        if "_matrix" not in self.__dict__:
            from scipy.sparse import csc_matrix

            self._matrix = csc_matrix((np.asarray(self.data, np.float32), np.asarray(self.indices),
                                       self.indptr), shape=(self.n, len(self.indptr) - 1))
        return self._matrix

    def scores(self, tokens: list[str]) -> np.ndarray:
        """BM25 score (n,) of every document for ``tokens`` (a token repeated in the query counts again)."""
        ids, counts = np.unique([self.vocab[t] for t in tokens if t in self.vocab], return_counts=True)
        if not len(ids):
            return np.zeros(self.n, np.float32)
        return np.asarray(self.matrix[:, ids] @ counts.astype(np.float32), np.float32).ravel()

    def documents_with(self, token: str) -> np.ndarray:
        """Ids of the documents that contain ``token``."""
        t = self.vocab.get(token)
        return np.zeros(0, np.int64) if t is None else np.asarray(self.indices[self.indptr[t]:self.indptr[t + 1]])

    def search(self, tokens: list[str], k: int) -> tuple[np.ndarray, np.ndarray]:
        """(document ids, BM25 scores) of the ``k`` best documents with a positive score."""
        scores = self.scores(tokens)
        top = top_k(scores, k)
        top = top[scores[top] > 0]
        return top, scores[top]


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indexes of the ``k`` largest scores, best first (ties: lower index first)."""
    k = min(k, len(scores))
    if k <= 0:
        return np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < len(scores) else np.arange(len(scores))
    return part[np.lexsort((part, -scores[part]))]


def stem_spans(text: str, terms: set[str]) -> list[tuple[int, int]]:
    """Character spans of the words of ``text`` whose stem is one of ``terms``.

    >>> stem_spans("Tumours with necrosis.", {"tumour", "necrosi"})
    [(0, 7), (13, 21)]
    """
    if not terms:
        return []
    return [(m.start(), m.end()) for m in _TOKEN.finditer(text) if stem(m.group(0)) in terms]
