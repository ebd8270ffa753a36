"""Split report text into sentences and clauses, keeping character offsets (for highlighting)."""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at . ! ? ; or a line break, unless the full stop belongs to an abbreviation or a number.
_ABBREVIATIONS = ("e.g", "i.e", "approx", "dr", "vs", "fig", "no", "cf", "etc")
_END = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)|\s*\n\s*(?=[A-Z])")
# Clauses (for dense attribute matching): commas, colons, and the conjunctions that join findings.
_CLAUSE = re.compile(r"\s*[,:;()]\s*|\s+(?:and|with|or|but|while|whereas)\s+", re.IGNORECASE)
MAX_SENTENCE_CHARS = 1000


@dataclass(frozen=True)
class Span:
    """A piece of a text: its characters [start, end) and the text itself."""

    start: int
    end: int
    text: str


def split_sentences(text: str) -> list[Span]:
    """Sentences of a report, stripped, with offsets into ``text``; long run-ons are cut at MAX_SENTENCE_CHARS.

    >>> [s.text for s in split_sentences("Adenocarcinoma, grade 2. No necrosis; margins clear.\\nDr. X")]
    ['Adenocarcinoma, grade 2.', 'No necrosis;', 'margins clear.', 'Dr. X']
    """
    spans, start = [], 0
    for match in _END.finditer(text):
        if _abbreviation_before(text, match.start()):
            continue
        spans.extend(_pieces(text, start, match.start()))
        start = match.end()
    spans.extend(_pieces(text, start, len(text)))
    return spans


def split_clauses(sentence: Span) -> list[Span]:
    """Clauses of a sentence (offsets into the same text as the sentence's).

    >>> [c.text for c in split_clauses(Span(0, 44, "Adenocarcinoma with necrosis and mucin pools"))]
    ['Adenocarcinoma', 'necrosis', 'mucin pools']
    """
    out, start = [], 0
    for match in _CLAUSE.finditer(sentence.text):
        out.extend(_pieces(sentence.text, start, match.start(), sentence.start))
        start = match.end()
    out.extend(_pieces(sentence.text, start, len(sentence.text), sentence.start))
    return [c for c in out if re.search(r"[A-Za-z]{3}", c.text)]


def _abbreviation_before(text: str, at: int) -> bool:
    if at == 0 or text[at - 1] != ".":
        return False
    word = re.search(r"([A-Za-z.]+)\.$", text[max(0, at - 12):at])
    return bool(word) and word.group(1).lower() in _ABBREVIATIONS


def _pieces(text: str, start: int, end: int, offset: int = 0) -> list[Span]:
    """The stripped text[start:end] as spans of at most MAX_SENTENCE_CHARS (none when blank)."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    out = []
    while start < end:
        stop = min(end, start + MAX_SENTENCE_CHARS)
        out.append(Span(offset + start, offset + stop, text[start:stop]))
        start = stop
    return out
