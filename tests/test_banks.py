"""Knowledge banks: every shipped bank loads and is consistent; malformed files are rejected clearly."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from indexer.aggregation.bank import ORGANS, BankError, list_banks, load_bank
from indexer.errors import UserError

ORGAN_BANKS = ("lung", "breast", "colorectal", "kidney", "prostate", "skin")
TCGA_CODES = ("LUAD", "LUSC", "IDC", "ILC", "COAD", "TCGA-READ", "KIRC", "KIRP", "KICH", "PRAD", "SKCM")


def test_shipped_banks_load_and_include_general_and_organ_banks():
    names = list_banks()
    assert set(ORGAN_BANKS) | {"general"} <= set(names)
    general = load_bank("general")
    assert 16 <= len(general.prototypes) <= 32
    for name in names:
        bank = load_bank(name)
        assert bank.name == name and len(bank.sha256) == 64
        assert 2 <= len(bank.prototypes) <= 64
        lowered = [p.name.casefold() for p in bank.prototypes]
        assert len(set(lowered)) == len(lowered), f"{name}: duplicate prototype names"
        for proto in bank.prototypes:
            assert 3 <= len(proto.descriptions) <= 8
            assert set(proto.organs) <= {*ORGANS, "any"}


def test_organ_banks_extend_general_and_add_their_own_prototypes():
    general = load_bank("general")
    for organ in ORGAN_BANKS:
        bank = load_bank(organ)
        assert bank.organ == organ
        assert bank.prototypes[: len(general.prototypes)] == general.prototypes
        extra = bank.prototypes[len(general.prototypes):]
        assert extra and all(organ in p.organs for p in extra)
        assert bank.sha256 != general.sha256


def test_diseases_are_unique_and_name_organs_with_a_bank():
    bank = load_bank("general")
    terms = [t.casefold() for d in bank.diseases for t in (d.name, *d.synonyms)]
    assert len(set(terms)) == len(terms)
    assert {d.organ for d in bank.diseases} <= {load_bank(n).organ for n in list_banks()}
    assert all(d.attributes for d in bank.diseases)
    for organ in ORGAN_BANKS:
        assert load_bank(organ).diseases == bank.diseases  # shared, unfiltered
    assert len({bank.find_disease(code).name for code in TCGA_CODES}) == len(TCGA_CODES)


def test_descriptions_fit_the_clip_text_context():
    open_clip = pytest.importorskip("open_clip")
    tokenizer = open_clip.get_tokenizer("ViT-B-16")  # bundled BPE vocabulary, no download
    texts = [t for n in list_banks() for p in load_bank(n).prototypes for t in p.descriptions]
    tokens = tokenizer(texts)
    assert int((tokens[:, -1] != 0).sum()) == 0, "a description fills the 77-token context"


@pytest.mark.parametrize("text, expected", [
    ("similar cases for: LUAD with necrosis", "lung adenocarcinoma"),
    ("tcga-kirc", "clear cell renal cell carcinoma"),
    ("Squamous cell carcinoma of the lung, keratinizing", "lung squamous cell carcinoma"),
    ("ductal carcinoma in situ with comedo necrosis", "ductal carcinoma in situ"),
    ("Clear-Cell Renal Cell Carcinoma", "clear cell renal cell carcinoma"),
    ("please read the report", None),          # no whole-word hit ("READ" only as TCGA-READ)
    ("lusca", None),                           # whole words only
    ("squamous cell carcinoma", None),         # ambiguous (lung / skin): no bare synonym
])
def test_find_disease_by_name_or_synonym(text, expected):
    found = load_bank("general").find_disease(text)
    assert (found.name if found else None) == expected


def test_sha256_is_stable_and_content_sensitive(tmp_path):
    assert load_bank("lung").sha256 == load_bank("lung").sha256
    path = _write(tmp_path, VALID)
    base = load_bank(str(path)).sha256
    _write(tmp_path, VALID + "# a comment changes nothing\n")
    assert load_bank(str(path)).sha256 == base
    _write(tmp_path, VALID.replace("pale pink stroma", "pale pink fibrous stroma"))
    assert load_bank(str(path)).sha256 != base


VALID = textwrap.dedent("""\
    name: mine
    extends: general
    prototypes:
      - name: stroma x
        organs: [lung]
        descriptions: [pale pink stroma, loose stroma, fibrous stroma with vessels]
    diseases:
      - name: my disease
        organ: lung
        synonyms: [MYD]
        attributes: [odd cells]
""")


def _write(tmp_path: Path, text: str, name: str = "my.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_user_bank_file_extends_general(tmp_path):
    bank = load_bank(str(_write(tmp_path, VALID)))
    assert bank.name == "mine"
    assert bank.prototypes[-1].name == "stroma x"
    assert len(bank.prototypes) == len(load_bank("general").prototypes) + 1
    assert bank.find_disease("a case of MYD").name == "my disease"
    assert bank.find_disease("LUAD").name == "lung adenocarcinoma"


BROKEN = {
    "missing field": (
        VALID.replace("    descriptions: [pale pink stroma, loose stroma, fibrous stroma with vessels]\n", ""),
        "prototype #1 ('stroma x'): missing field 'descriptions'"),
    "wrong type": (
        VALID.replace("organs: [lung]", "organs: lung"),
        "prototype #1 ('stroma x'): field 'organs' must be a list"),
    "too few descriptions": (
        VALID.replace("[pale pink stroma, loose stroma, fibrous stroma with vessels]", "[pale pink stroma]"),
        "prototype #1 ('stroma x'): field 'descriptions' must be a list of 3-8 non-empty strings"),
    "duplicate name": (
        VALID.replace("name: stroma x", "name: Fibrous Stroma"),
        "prototype #1 ('Fibrous Stroma'): duplicate name (already used by general.yaml: prototype #3"),
    "unknown organ": (
        VALID.replace("organs: [lung]", "organs: [lungs]"),
        "prototype #1 ('stroma x'): field 'organs': unknown organ 'lungs'"),
    "unknown disease organ": (
        VALID.replace("organ: lung\n", "organ: moon\n"),
        "disease #1 ('my disease'): field 'organ': unknown organ 'moon'"),
    "synonym clash": (
        VALID.replace("[MYD]", "[LUAD]"),
        "disease #1 ('my disease'): duplicate synonym 'LUAD' (already used by diseases.yaml: disease #1"),
    "unknown field": (
        VALID.replace("    organs: [lung]\n", "    organs: [lung]\n    colour: red\n"),
        "prototype #1 ('stroma x'): unknown field 'colour'"),
    "yaml syntax": (VALID.replace("organs: [lung]", "organs: [lung"), "invalid YAML at line"),
    "not a mapping": ("- just\n- a list\n", "must be a mapping"),
    "unknown parent": (VALID.replace("extends: general", "extends: nosuch"), "unknown bank 'nosuch'"),
    "too few prototypes": (VALID.replace("extends: general\n", ""), "has 1 prototype(s); a bank needs 2-64"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_bank_file_is_rejected_naming_file_entry_and_field(tmp_path, case):
    text, expected = BROKEN[case]
    path = _write(tmp_path, text)
    with pytest.raises(BankError) as caught:
        load_bank(str(path))
    message = str(caught.value)
    assert isinstance(caught.value, UserError)
    assert "\n" not in message
    assert message.startswith(f"bank file {path}")
    assert expected in message


def test_extends_cycle_missing_file_and_unknown_name_are_user_errors(tmp_path):
    _write(tmp_path, VALID.replace("extends: general", "extends: b.yaml"), "a.yaml")
    _write(tmp_path, VALID.replace("extends: general", "extends: a.yaml"), "b.yaml")
    with pytest.raises(BankError, match="cycle"):
        load_bank(str(tmp_path / "a.yaml"))
    with pytest.raises(BankError, match="not found"):
        load_bank(str(tmp_path / "absent.yaml"))
    with pytest.raises(BankError, match="known: .*general.*lung"):
        load_bank("pancreas")
