"""The synthetic reports benchmark (benchmarks/reports.py) must not grade itself: its negation and uncertainty
phrasings are not entries of the NegEx trigger lists, and its held-out paraphrases (in reports and in queries)
share no term and no content-word pair with the knowledge banks or the planted class names."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from benchmarks import reports as reports_benchmark
from indexer.reports import negation

ROOT = Path(__file__).resolve().parents[1]
STOP = {"a", "an", "the", "of", "in", "with", "and", "or", "to", "by", "on", "at", "is", "are", "was", "were",
        "for", "from", "as", "be", "there", "this", "that", "any", "some"}
TRIGGERS = {t for table in (negation.PRE_NEGATION, negation.POST_NEGATION, negation.PRE_UNCERTAIN,
                            negation.POST_UNCERTAIN, negation.PSEUDO) for t in table}


@pytest.fixture(scope="module")
def bench():
    return reports_benchmark


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9][a-z0-9'\-]*", text.lower())


def bank_strings() -> list[str]:
    """Every text of every shipped bank and of the planted bank the benchmark indexes with."""
    from benchmarks.fixtures import planted

    found: list[str] = []

    def walk(node):
        if isinstance(node, str):
            found.append(node)
        elif isinstance(node, dict):
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for path in sorted((ROOT / "indexer" / "aggregation" / "banks").glob("*.yaml")):
        walk(yaml.safe_load(path.read_text()))
    protos = "\n".join(f"  - name: {c}\n    organs: [any]\n    descriptions: [{c}, {c} tissue, a region of {c}]"
                       for c in planted.CLASSES)
    walk(yaml.safe_load(planted.BANK_YAML.format(prototypes=protos)))
    return found + list(planted.CLASSES)


def content_pairs(text: str) -> set[tuple[str, str]]:
    kept = [w for w in words(text) if w not in STOP]
    return set(zip(kept, kept[1:]))


def paraphrase_overlaps(phrase: str, banks: list[str]) -> list[str]:
    """Why ``phrase`` is not held out from the banks: a bank term inside it (the planted text tower and the report
    matcher match names and synonyms as substrings or whole words), or a content-word pair shared with any text."""
    low, pairs, reasons = phrase.lower(), content_pairs(phrase), []
    for text in banks:
        if len(words(text)) <= 3 and text.lower() in low:
            reasons.append(f"contains bank term {text!r}")
        shared = pairs & content_pairs(text)
        if shared:
            reasons.append(f"shares {sorted(shared)[0]} with {text!r}")
    if len(words(phrase)) == 1 and any(phrase.lower() in words(text) for text in banks):
        reasons.append("is a word of a bank text")
    return reasons


def cue_overlaps(template: str) -> list[str]:
    """Why a negation or uncertainty template is a trigger list's own entry: the words before or after the slot
    are exactly an entry, or hold an entry of two or more words."""
    before, _, after = template.partition("{}")
    reasons = []
    for cue in (" ".join(words(before)), " ".join(words(after))):
        if not cue:
            continue
        if cue in TRIGGERS:
            reasons.append(f"{cue!r} is a trigger")
        reasons += [f"{cue!r} holds the trigger {t!r}" for t in TRIGGERS
                    if " " in t and re.search(rf"\b{re.escape(t)}\b", cue)]
    return reasons


def test_the_checks_catch_the_old_self_grading_wording():
    banks = bank_strings()
    assert paraphrase_overlaps("mucinous material", banks)  # "mucin" inside: the planted encoder matches it
    assert paraphrase_overlaps("necrotic debris", banks)  # a general.yaml description
    assert paraphrase_overlaps("sheets of malignant epithelial cells", banks)
    for template in ("No {} is seen.", "Negative for {}.", "There is no evidence of {}.", "{} is not identified.",
                     "{} cannot be excluded.", "Suspicious for {}."):
        assert cue_overlaps(template), template


def test_benchmark_wording_is_written_apart_from_the_banks_and_the_triggers(bench):
    banks = bank_strings()
    phrases = [p for options in bench.HELD_OUT.values() for p in options] + list(bench.QUERY_PARAPHRASE.values())
    overlapping = {p: paraphrase_overlaps(p, banks) for p in phrases}
    assert not any(overlapping.values()), {p: r[:2] for p, r in overlapping.items() if r}
    assert set(bench.HELD_OUT) == set(bench.QUERY_PARAPHRASE) == set(bench.BANK_WORDING)
    assert not set(bench.QUERY_PARAPHRASE.values()) & {p for v in bench.HELD_OUT.values() for p in v}
    templates = {t: cue_overlaps(t) for t in bench.NEGATE + bench.UNSURE}
    assert not any(templates.values()), {t: r for t, r in templates.items() if r}
    for template in bench.AFFIRM:  # affirmations hold no negation or uncertainty cue at all
        assert not [t for t in TRIGGERS if re.search(rf"\b{re.escape(t)}\b", template.lower())], template
