"""BM25 over report sentences (bm25s: sparse matrices, saved and memory-mapped), English stop words and stemming."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

_TOKEN = r"(?u)\b\w\w+\b"


def _stemmer():
    import Stemmer

    return Stemmer.Stemmer("english")


def tokenize(texts: list[str], as_ids: bool = True):
    """bm25s tokens of ``texts``: ids and vocabulary, or (``as_ids=False``) one list of stems per text."""
    import bm25s

    return bm25s.tokenize(list(texts), lower=True, stopwords="en", stemmer=_stemmer(), token_pattern=_TOKEN,
                          show_progress=False, return_ids=as_ids)


def build_lexical(texts: list[str], folder: Path) -> None:
    """Index ``texts`` (one document per sentence, ids in order) and save the index in ``folder``."""
    import bm25s

    retriever = bm25s.BM25()
    if texts:
        retriever.index(tokenize(texts), show_progress=False)
    folder.mkdir(parents=True, exist_ok=True)
    if texts:
        retriever.save(str(folder))
    (folder / "count").write_text(f"{len(texts)}\n")


class LexicalIndex:
    """A saved BM25 index of ``n`` sentences."""

    def __init__(self, folder: Path):
        import bm25s

        self.n = int((folder / "count").read_text())
        self.retriever = bm25s.BM25.load(str(folder), mmap=True) if self.n else None

    def search(self, query: str, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(sentence ids, BM25 scores) of the ``k`` best sentences with a positive score."""
        if self.retriever is None or not re.search(r"\w\w", query):
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        tokens = [[t for t in tokenize([query], as_ids=False)[0] if t in self.retriever.vocab_dict]]
        if not tokens[0]:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        ids, scores = self.retriever.retrieve(tokens, k=min(k, self.n), show_progress=False, n_threads=1)
        ids, scores = ids[0].astype(np.int64), scores[0].astype(np.float32)
        keep = scores > 0
        return ids[keep], scores[keep]


def query_terms(query: str) -> set[str]:
    """The stemmed content words of a query (what BM25 matches; used to highlight them in sentences)."""
    return set(tokenize([query], as_ids=False)[0]) - {""}


def stem_spans(text: str, terms: set[str]) -> list[tuple[int, int]]:
    """Character spans of the words of ``text`` whose stem is one of ``terms``.

    >>> stem_spans("Tumours with necrosis.", {"tumour", "necrosi"})
    [(0, 7), (13, 21)]
    """
    if not terms:
        return []
    stemmer = _stemmer()
    return [(m.start(), m.end()) for m in re.finditer(_TOKEN, text) if stemmer.stemWord(m.group(0).lower()) in terms]
