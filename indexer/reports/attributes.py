"""Fine-grained attributes of report sentences, against the knowledge bank: which diseases, disease
attributes and prototype morphologies a sentence states, and whether it affirms, negates or doubts each.

A sentence matches a term by its name or a synonym as whole words (``via = "term"``), or one of its clauses
matches a term's phrases (name, synonyms, descriptions) by sentence-embedding cosine ≥ SIMILARITY
(``via = "similarity"``: wording the bank does not have). Polarity comes from the NegEx scopes
(``negation.py``) over the matched characters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from indexer.reports.negation import AFFIRMED, polarity_at, scopes
from indexer.reports.sentences import Span, split_clauses

SIMILARITY = 0.5  # clause ↔ phrase cosine (all-MiniLM-L6-v2) for a match by wording the bank lacks
DISEASE_SIMILARITY = 0.8  # stricter for diseases: "adenocarcinoma" alone is near every organ's adenocarcinoma
PER_CLAUSE = 2  # terms a clause may match by similarity
POLARITIES = ("affirmed", "negated", "uncertain")
_WORDS = re.compile(r"[a-z0-9]+")


@dataclass(frozen=True)
class Term:
    """Something a report can state: a disease, a disease attribute or a prototype morphology.

    Attributes:
        name: the attribute's name (what ``--has`` filters on), lower case.
        kind: ``disease``, ``attribute`` or ``prototype``.
        disease: the disease it belongs to ("" for prototypes).
        synonyms: names matched as whole words (the name included).
        phrases: texts matched by similarity (synonyms plus descriptions).
    """

    name: str
    kind: str
    disease: str
    synonyms: tuple[str, ...]
    phrases: tuple[str, ...]


@dataclass(frozen=True)
class Finding:
    """One attribute stated by one sentence: characters [start, end) of the sentence matched it."""

    attribute: str
    kind: str
    disease: str
    polarity: str
    trigger: str
    via: str
    score: float
    start: int
    end: int


def bank_terms(bank) -> tuple[Term, ...]:
    """The terms of a knowledge bank: its diseases, their attributes and its prototypes (names unique)."""
    terms: dict[str, Term] = {}
    for disease in bank.diseases:
        names = tuple(dict.fromkeys(s.lower() for s in (disease.name, *disease.synonyms)))
        terms.setdefault(names[0], Term(names[0], "disease", disease.name, names, names))
        for attribute in disease.attributes:
            key = attribute.lower()
            terms.setdefault(key, Term(key, "attribute", disease.name, (key,), (key,)))
    for proto in bank.prototypes:
        key = proto.name.lower()
        phrases = tuple(dict.fromkeys((key, *(d.lower() for d in proto.descriptions))))
        terms.setdefault(key, Term(key, "prototype", "", (key,), phrases))
    return tuple(terms.values())


class AttributeMatcher:
    """Match sentences to bank terms (by synonym and by similarity) with their polarity.

    Args:
        terms: from :func:`bank_terms`.
        model: a :class:`indexer.reports.model.ReportModel` (None: synonym matches only).
        phrase_vectors: the phrases' embeddings by this model, when already known (``phrase_vectors``).
    """

    def __init__(self, terms: tuple[Term, ...], model=None, phrase_vectors: np.ndarray | None = None):
        self.terms, self.model = terms, model
        self._by_word: dict[str, list[tuple[int, Term, re.Pattern]]] = {}  # a synonym's first word → its patterns
        for order, (t, s) in enumerate((t, s) for t in terms for s in t.synonyms):
            words = [w.lower() for w in re.split(r"[\s\-]+", s.strip()) if w] or [""]
            keys = {words[0], words[0] + "s", words[0] + "es"} if len(words) == 1 else set(words[:1])
            if not _WORDS.fullmatch(words[0]):
                keys = {""}  # not a plain word: tried on every sentence
            for key in keys:
                self._by_word.setdefault(key, []).append((order, t, re.compile(_pattern(s), re.IGNORECASE)))
        # A phrase that is itself negated ("few mitoses and no necrosis") is matched by its words only.
        usable = [(i, p) for i, t in enumerate(self.terms) for p in t.phrases if not scopes(p)]
        self._owners = np.asarray([i for i, _ in usable], np.int64)
        self._texts = [p for _, p in usable]
        if phrase_vectors is not None and len(phrase_vectors) == len(usable):
            self.__dict__["phrase_vectors"] = np.asarray(phrase_vectors, np.float32)

    @cached_property
    def phrase_vectors(self) -> np.ndarray:
        """Unit embeddings of the phrases matched by similarity (encoded once per model and bank)."""
        return self.model.encode(self._texts)

    @property
    def _phrases(self) -> tuple[np.ndarray, np.ndarray]:
        return self._owners, self.phrase_vectors

    def match(self, sentences: list[Span]) -> list[list[Finding]]:
        """The findings of each sentence (texts with offsets relative to the sentence)."""
        found = [self.by_synonym(s.text) for s in sentences]
        if self.model is None or not self.terms:
            return found
        clauses = [(i, c) for i, s in enumerate(sentences) for c in split_clauses(Span(0, len(s.text), s.text))]
        if not clauses:
            return found
        owners, phrases = self._phrases
        sims = self.model.encode([c.text for _, c in clauses]) @ phrases.T
        for (i, clause), row in zip(clauses, sims):
            best = np.full(len(self.terms), -1.0, np.float32)
            np.maximum.at(best, owners, row)
            have = {f.attribute for f in found[i]}
            text = sentences[i].text
            for t in np.argsort(-best)[:PER_CLAUSE]:
                term = self.terms[int(t)]
                if best[t] < (DISEASE_SIMILARITY if term.kind == "disease" else SIMILARITY) or term.name in have:
                    continue
                polarity, trigger = polarity_at(text, clause.start, clause.end)
                found[i].append(Finding(term.name, term.kind, term.disease, polarity, trigger, "similarity",
                                        float(best[t]), clause.start, clause.end))
                have.add(term.name)
        return found

    def by_synonym(self, text: str, found: list | None = None) -> list[Finding]:
        """The findings of one sentence by name or synonym (``found``: its NegEx scopes, when known)."""
        out: dict[str, Finding] = {}
        words = {"", *_WORDS.findall(text.lower())}
        candidates = sorted({c[0]: c for w in words for c in self._by_word.get(w, ())}.values(),
                            key=lambda c: c[0])
        if not candidates:
            return []
        found = scopes(text) if found is None else found
        for _, term, pattern in candidates:
            for m in pattern.finditer(text):
                polarity, trigger = polarity_at(text, m.start(), m.end(), found)
                old = out.get(term.name)
                if old is None or (old.polarity != AFFIRMED and polarity == AFFIRMED):
                    out[term.name] = Finding(term.name, term.kind, term.disease, polarity, trigger, "term", 1.0,
                                             m.start(), m.end())
        return list(out.values())


def parse_attribute_query(text: str) -> tuple[str, str]:
    """``--has`` syntax → (polarity, attribute): ``X`` affirmed, ``not X`` / ``no X`` negated, ``maybe X`` uncertain.

    >>> parse_attribute_query("not Necrosis"), parse_attribute_query("maybe lymphoma")
    (('negated', 'necrosis'), ('uncertain', 'lymphoma'))
    """
    words = text.strip().lower().split(None, 1)
    if len(words) == 2 and words[0] in ("not", "no", "!"):
        return "negated", words[1].strip()
    if len(words) == 2 and words[0] in ("maybe", "uncertain", "?"):
        return "uncertain", words[1].strip()
    return "affirmed", text.strip().lower()


def _pattern(synonym: str) -> str:
    """Whole words, any run of spaces or hyphens between them, an optional plural ending."""
    words = [re.escape(w) for w in re.split(r"[\s\-]+", synonym.strip()) if w]
    return r"(?<![A-Za-z0-9])" + r"[\s\-]+".join(words) + r"(?:s|es)?(?![A-Za-z0-9])"

