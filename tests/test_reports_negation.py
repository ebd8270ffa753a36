"""Report sentences, NegEx scopes, the --has syntax and negation-aware query expansion (no model needed)."""

from __future__ import annotations

import pytest

from indexer.aggregation.bank import load_bank
from indexer.reports.attributes import AttributeMatcher, Term, parse_attribute_query
from indexer.reports.negation import AFFIRMED, NEGATED, UNCERTAIN, affirmed_text, polarity_at
from indexer.reports.sentences import split_sentences
from retrieval.query.parse import embed_text_query, expansion_disease


def polarity(sentence: str, word: str) -> str:
    at = sentence.lower().index(word)
    return polarity_at(sentence, at, at + len(word))[0]


@pytest.mark.parametrize("sentence, word, expected", [
    ("No necrosis is seen.", "necrosis", NEGATED),
    ("Negative for malignancy.", "malignancy", NEGATED),
    ("Tumour necrosis is absent.", "necrosis", NEGATED),
    ("Lymphovascular invasion not identified.", "invasion", NEGATED),
    ("Adenocarcinoma without necrosis, with abundant mucin.", "necrosis", NEGATED),
    ("Adenocarcinoma without necrosis, with abundant mucin.", "mucin", AFFIRMED),
    ("Adenocarcinoma without necrosis, with abundant mucin.", "adenocarcinoma", AFFIRMED),
    ("There is no evidence of lymphoma.", "lymphoma", NEGATED),
    ("Cannot exclude lymphoma.", "lymphoma", UNCERTAIN),
    ("Necrosis cannot be excluded.", "necrosis", UNCERTAIN),
    ("Suspicious for lymphovascular invasion.", "invasion", UNCERTAIN),
    ("Mucin present but necrosis cannot be excluded.", "mucin", AFFIRMED),
    ("No mucin; necrosis present.", "necrosis", AFFIRMED),
    ("No increase in necrosis.", "necrosis", AFFIRMED),
    ("Extensive tumour necrosis.", "necrosis", AFFIRMED),
    ("Not only necrosis but also mucin.", "necrosis", AFFIRMED),
    ("No necrosis or lymphovascular invasion.", "invasion", NEGATED),
    ("Lymphovascular invasion: not identified", "invasion", NEGATED),  # synoptic "finding: value" lines
    ("Perineural invasion: absent. Necrosis: present.", "perineural", NEGATED),
    ("Perineural invasion: absent. Necrosis: present.", "necrosis", AFFIRMED),
    ("Lymphovascular space invasion :none identified in submitted sections", "space", NEGATED),
    ("Extracapsular extension: no.", "extension", NEGATED),
    ("Margins: negative for carcinoma", "margins", AFFIRMED),
])
def test_negex_scopes(sentence, word, expected):
    assert polarity(sentence, word) == expected


def test_sentences_keep_offsets_and_abbreviations():
    text = "Adenocarcinoma, e.g. acinar. No necrosis; margins clear.\n\nComment: see Dr. Smith"
    spans = split_sentences(text)
    assert [s.text for s in spans] == ["Adenocarcinoma, e.g. acinar.", "No necrosis;", "margins clear.",
                                       "Comment: see Dr. Smith"]
    assert all(text[s.start:s.end] == s.text for s in spans)
    assert split_sentences("   \n ") == []


def test_synonym_matching_gives_polarity_per_term():
    terms = (Term("necrosis", "prototype", "", ("necrosis",), ("necrosis",)),
             Term("lymphoma", "disease", "lymphoma", ("lymphoma", "nhl"), ("lymphoma",)))
    found = AttributeMatcher(terms).match(split_sentences("Negative for NHLs. Necrosis present."))
    assert [(f.attribute, f.polarity, f.via) for f in found[0]] == [("lymphoma", NEGATED, "term")]
    assert [(f.attribute, f.polarity) for f in found[1]] == [("necrosis", AFFIRMED)]


def test_has_syntax():
    assert parse_attribute_query("necrosis") == ("affirmed", "necrosis")
    assert parse_attribute_query("not Necrosis") == ("negated", "necrosis")
    assert parse_attribute_query("no mucin") == ("negated", "mucin")
    assert parse_attribute_query("maybe lymphoma") == ("uncertain", "lymphoma")


def test_affirmed_text_blanks_negated_scopes_and_keeps_offsets():
    text = "LUSC, no LUAD"
    assert len(affirmed_text(text)) == len(text)
    assert "LUAD" not in affirmed_text(text) and "LUSC" in affirmed_text(text)


class _Recorder:
    """A text tower that records what it embeds (so the test sees whether the attributes were mixed in)."""

    def __init__(self):
        self.seen: list[str] = []

    def encode_text(self, texts):
        import numpy as np

        self.seen.extend(texts)
        return np.eye(len(texts), 8, dtype=np.float32)


@pytest.mark.parametrize("query, expanded", [
    ("lung adenocarcinoma", "lung adenocarcinoma"),
    ("no lung adenocarcinoma", None),
    ("negative for LUAD", None),
    ("cannot exclude small cell lung carcinoma", None),
    ("suspicious for IDC", None),
    ("LUSC, no LUAD", "lung squamous cell carcinoma"),
])
def test_expansion_skips_negated_and_uncertain_diseases(query, expanded):
    bank = load_bank("general")
    encoder = _Recorder()
    _, details = embed_text_query(encoder, query, bank)
    assert details["expanded_with"] == expanded
    if expanded is None:
        assert details["not_expanded"]["disease"] in query.lower() or details["not_expanded"]["polarity"]
        assert not any(a in encoder.seen for d in bank.diseases for a in d.attributes)
    else:
        assert set(bank.find_disease(expanded).attributes) <= set(encoder.seen)
    assert (expansion_disease(query, bank) is None) == (expanded is None)
