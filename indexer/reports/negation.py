"""NegEx-style negation and uncertainty: which words of a sentence a trigger phrase puts in its scope.

A *pre* trigger ("no", "negative for", "cannot exclude") covers up to WINDOW words after it, a *post*
trigger ("is absent", "cannot be excluded") up to WINDOW words before it; a scope stops at a terminating
word ("but", "however", "although", …), a sentence or clause end (``.;:``), or another trigger. *Pseudo*
triggers ("no increase", "not only", "gram negative") look like triggers but negate nothing. Chapman et al.
(2001), "A simple algorithm for identifying negated findings and diseases in discharge summaries".
"""

from __future__ import annotations

import re
from dataclasses import dataclass

AFFIRMED, NEGATED, UNCERTAIN = "affirmed", "negated", "uncertain"
WINDOW = 6

PRE_NEGATION = (
    "no", "not", "without", "negative for", "absence of", "absent", "free of", "no evidence of", "no evidence for",
    "no sign of", "no signs of", "no features of", "no residual", "there is no", "there are no", "lack of",
    "lacks", "lacking", "nor", "neither", "devoid of", "rules out", "ruled out", "non", "never",
)
POST_NEGATION = (
    "absent", "is absent", "are absent", "not seen", "not identified", "not present", "is not present",
    "are not present", "not found", "not detected", "ruled out", "was ruled out", "is excluded", "negative",
    "not noted", "not evident", "none",
)
PRE_UNCERTAIN = (
    "cannot exclude", "can not exclude", "cannot rule out", "can not rule out",
    "suspicious for", "suspicious of", "possible", "possibly", "probable", "probably", "questionable",
    "equivocal for", "may represent", "might represent", "suggestive of", "concerning for", "rule out",
    "differential includes", "favour", "favor", "favoured", "favored", "likely", "query", "presumed",
)
POST_UNCERTAIN = ("cannot be excluded", "cannot be ruled out", "not excluded", "is suspected", "suspected",
                  "is possible", "uncertain", "equivocal", "is questioned")
PSEUDO = ("no increase", "no change", "not only", "not necessarily", "gram negative", "without difficulty",
          "no further", "not certain whether", "not rule out", "cannot be excluded from", "no longer")
TERMINATION = ("but", "however", "although", "though", "except", "apart from", "aside from", "yet",
               "nevertheless", "still", "whereas", "while", "which", "who", "present", "identified", "seen",
               "consistent with", "in keeping with", "diagnostic of", "shows", "showing", "reveals", "with")

_WORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9'\-/]*|[.;:?!]")
_BREAK = {".", ";", ":", "!", "?"}


@dataclass(frozen=True)
class Scope:
    """Characters [start, end) of a text that a trigger negates or makes uncertain."""

    start: int
    end: int
    polarity: str
    trigger: str


def _phrases(items: tuple[str, ...]) -> list[tuple[tuple[str, ...], str]]:
    return sorted(((tuple(p.split()), p) for p in items), key=lambda t: -len(t[0]))


_TABLES = [(kind, polarity, _phrases(items)) for kind, polarity, items in (
    ("pseudo", None, PSEUDO), ("pre", UNCERTAIN, PRE_UNCERTAIN), ("post", UNCERTAIN, POST_UNCERTAIN),
    ("pre", NEGATED, PRE_NEGATION), ("post", NEGATED, POST_NEGATION), ("term", None, TERMINATION))]
# first word → the trigger phrases it starts, in table order (longest first within a table): one dict look-up a word
_BY_FIRST: dict[str, list[tuple[tuple[str, ...], str, str | None, str]]] = {}
for _kind, _polarity, _items in _TABLES:
    for _words, _phrase in _items:
        _BY_FIRST.setdefault(_words[0], []).append((_words, _kind, _polarity, _phrase))


def scopes(text: str) -> list[Scope]:
    """The negated and uncertain scopes of a text (usually one sentence).

    >>> [(text[s.start:s.end], s.polarity) for text in ["No necrosis or lymphovascular invasion."]
    ...  for s in scopes(text)]
    [('necrosis or lymphovascular invasion', 'negated')]
    >>> [(t[s.start:s.end], s.polarity) for t in ["Mucin present but necrosis cannot be excluded"] for s in scopes(t)]
    [('necrosis', 'uncertain')]
    >>> [(t[s.start:s.end], s.polarity) for t in ["Lymphovascular invasion: not identified"] for s in scopes(t)]
    [('Lymphovascular invasion', 'negated')]
    """
    words = [(m.group(0).lower(), m.start(), m.end()) for m in _WORD.finditer(text)]
    tokens = [w for w, _, _ in words]
    marks: list[tuple[str, str | None, str] | None] = [None] * len(tokens)  # (kind, polarity, phrase) at a start
    lengths = [0] * len(tokens)
    i = 0
    while i < len(tokens):
        found = _match(tokens, i)
        if found is None:
            i += 1
            continue
        kind, polarity, phrase, n = found
        marks[i], lengths[i] = (kind, polarity, phrase), n
        i += n
    out = []
    for i, mark in enumerate(marks):
        if mark is None or mark[0] not in ("pre", "post"):
            continue
        kind, polarity, phrase = mark
        after = i + lengths[i]
        if kind == "pre" and i > 0 and tokens[i - 1] == ":" and (after == len(tokens) or tokens[after] in _BREAK):
            kind = "post"  # a synoptic value: "Perineural invasion: no."
        if kind == "pre":
            lo = hi = after
            while hi < len(tokens) and hi - lo < WINDOW and tokens[hi] not in _BREAK and marks[hi] is None:
                hi += 1
        else:
            lo = hi = i - 1 if i > 0 and tokens[i - 1] == ":" else i  # "Lymphovascular invasion: not identified"
            while lo > 0 and hi - lo < WINDOW and tokens[lo - 1] not in _BREAK and marks[lo - 1] is None \
                    and not _inside_mark(marks, lengths, lo - 1):
                lo -= 1
        if hi > lo:
            out.append(Scope(words[lo][1], words[hi - 1][2], polarity, phrase))
    return out


def polarity_at(text: str, start: int, end: int, found: list[Scope] | None = None) -> tuple[str, str]:
    """(polarity, trigger) of the characters [start, end) of ``text``: the scope covering them, else affirmed.

    >>> polarity_at("negative for malignancy", 13, 23)
    ('negated', 'negative for')
    """
    for scope in scopes(text) if found is None else found:
        if scope.start < end and start < scope.end:
            return scope.polarity, scope.trigger
    return AFFIRMED, ""


def affirmed_text(text: str) -> str:
    """``text`` with its negated and uncertain scopes (and their triggers) blanked out, offsets kept.

    >>> affirmed_text("adenocarcinoma, no necrosis").rstrip()
    'adenocarcinoma,'
    """
    chars = list(text)
    for scope in scopes(text):
        for j in range(scope.start, scope.end):
            chars[j] = " "
    masked = "".join(chars)
    for table in (PRE_NEGATION, PRE_UNCERTAIN, POST_NEGATION, POST_UNCERTAIN):
        for phrase in sorted(table, key=len, reverse=True):
            masked = re.sub(rf"(?i)\b{re.escape(phrase)}\b", lambda m: " " * len(m.group(0)), masked)
    return masked


def _match(tokens: list[str], i: int) -> tuple[str, str | None, str, int] | None:
    """The longest trigger phrase starting at token i (pseudo triggers first, so they win ties)."""
    best = None
    for words, kind, polarity, phrase in _BY_FIRST.get(tokens[i], ()):
        n = len(words)
        if (best is None or n > best[3]) and tuple(tokens[i:i + n]) == words:
            best = (kind, polarity, phrase, n)
    return best


def _inside_mark(marks, lengths, j: int) -> bool:
    """Whether token j lies inside a multi-word trigger that starts before it."""
    return any(marks[i] is not None and i + lengths[i] > j for i in range(max(0, j - 4), j))
