"""Index-time analysis of report texts: sentences, NegEx scopes, polarity-tagged words and bank attributes,
each computed once per sentence so that no query parses a report again."""

from __future__ import annotations

from dataclasses import dataclass

from indexer.reports.lexical import tagged_tokens
from indexer.reports.negation import scopes
from indexer.reports.sentences import split_sentences


@dataclass
class ReportRows:
    """What the report tables store for one report.

    Attributes:
        slide_id: the report's slide.
        sentences: one dict per sentence (start, end, text, tokens: its tagged words space-separated).
        attributes: one dict per (sentence, attribute) finding; ``sentence`` indexes ``sentences``.
        tokens: the report's tagged words (its sentences', in order).
    """

    slide_id: str
    sentences: list[dict]
    attributes: list[dict]
    tokens: list[str]


def analyze(slide_id: str, text: str, matcher) -> ReportRows:
    """Split, tag and match one report; ``matcher`` an AttributeMatcher (its name and synonym matches)."""
    out = ReportRows(slide_id, [], [], [])
    for position, span in enumerate(split_sentences(text)):
        found = scopes(span.text)
        tokens = tagged_tokens(span.text, found)
        out.sentences.append({"start": span.start, "end": span.end, "text": span.text, "tokens": " ".join(tokens)})
        out.attributes.extend({"sentence": position, **f.__dict__} for f in matcher.by_synonym(span.text, found))
        out.tokens.extend(tokens)
    return out
