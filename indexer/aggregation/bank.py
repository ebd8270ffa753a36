"""Knowledge bank: morphological prototypes and disease knowledge, loaded from validated YAML."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from indexer.errors import UserError

#: Organ names a prototype or disease may name; ``any`` (prototypes only) means every organ.
ORGANS = (
    "adrenal", "bladder", "bone", "brain", "breast", "cervix", "colorectal", "esophagus",
    "head_and_neck", "kidney", "liver", "lung", "lymph_node", "ovary", "pancreas", "pleura",
    "prostate", "skin", "soft_tissue", "stomach", "testis", "thymus", "thyroid", "uterus",
)
ANY_ORGAN = "any"
DESCRIPTIONS_PER_PROTOTYPE = (3, 8)
PROTOTYPES_PER_BANK = (2, 64)
DISEASES_FILE = "diseases.yaml"

_BANK_FIELDS = ("name", "organ", "extends", "description", "prototypes", "diseases")
_PROTOTYPE_FIELDS = ("name", "organs", "descriptions")
_DISEASE_FIELDS = ("name", "organ", "synonyms", "attributes")


class BankError(UserError):
    """A knowledge-bank name or file is unknown or malformed."""


@dataclass(frozen=True)
class Prototype:
    """A morphological type a slide can contain, described by 3-8 caption-style sentences."""

    name: str
    organs: tuple[str, ...]
    descriptions: tuple[str, ...]


@dataclass(frozen=True)
class Disease:
    """KEP-style disease knowledge: the organ, synonyms and morphological attributes."""

    name: str
    organ: str
    synonyms: tuple[str, ...]
    attributes: tuple[str, ...]


@dataclass(frozen=True)
class Bank:
    """A resolved knowledge bank (``extends`` flattened, shared diseases included).

    ``sha256`` hashes the canonical JSON of name, organ, prototypes and diseases, so any change
    that alters embeddings or query expansion changes it; comments and ``description`` do not.
    """

    name: str
    prototypes: tuple[Prototype, ...]
    diseases: tuple[Disease, ...]
    sha256: str
    organ: str | None = None
    description: str = ""

    @property
    def prototype_names(self) -> tuple[str, ...]:
        """Prototype names in prototype-id order."""
        return tuple(p.name for p in self.prototypes)

    def find_disease(self, text: str) -> Disease | None:
        """Return the disease whose name or synonym occurs in ``text`` as whole words.

        Matching ignores case and punctuation ("TCGA-LUAD" matches "tcga luad"). When several
        terms occur, the longest wins (the most specific), then the earliest in the text.

        Args:
            text: Free text, typically a search query.

        Returns:
            The matching disease, or ``None``.
        """
        haystack = f" {_normalize_term(text)} "
        best: tuple[int, int, Disease] | None = None
        for disease in self.diseases:
            for term in (disease.name, *disease.synonyms):
                needle = _normalize_term(term)
                at = haystack.find(f" {needle} ") if needle else -1
                if at >= 0 and (best is None or (-len(needle), at) < best[:2]):
                    best = (-len(needle), at, disease)
        return best[2] if best else None


def list_banks() -> list[str]:
    """Names of the banks shipped with the package (``general`` and the organ banks)."""
    files = resources.files("indexer.aggregation").joinpath("banks").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".yaml") and f.name != DISEASES_FILE)


def load_bank(name_or_path: str) -> Bank:
    """Load and validate a knowledge bank.

    A bank file has ``name``, optional ``organ`` and ``description``, optional ``extends`` (a
    shipped bank name or a path relative to the file, whose prototypes come first), a list of
    ``prototypes`` (name, organs, 3-8 descriptions) and optional ``diseases`` (name, organ,
    synonyms, attributes). Organ banks extend ``general``; every bank also gets the shared
    ``diseases.yaml`` (all organs, unfiltered, so query expansion recognises any disease).

    Args:
        name_or_path: A shipped bank name (see :func:`list_banks`) or a path to a YAML file.

    Returns:
        The resolved bank.

    Raises:
        BankError: Unknown name, unreadable file, or a malformed entry (the message names the
            file, the entry and the field).
    """
    path, label = _locate(name_or_path, base=None)
    shared = _parse_diseases(_read_yaml(_shipped(DISEASES_FILE), DISEASES_FILE), DISEASES_FILE)
    content = _resolve(path, label, chain=())
    prototypes = [p for p, _ in content["prototypes"]]
    diseases = [d for d, _ in _merge(shared, content["diseases"])]
    low, high = PROTOTYPES_PER_BANK
    if not low <= len(prototypes) <= high:
        raise BankError(f"bank file {label}: has {len(prototypes)} prototype(s); a bank needs {low}-{high}")
    canonical = {
        "name": content["name"], "organ": content["organ"],
        "prototypes": [asdict(p) for p in prototypes], "diseases": [asdict(d) for d in diseases],
    }
    blob = json.dumps(canonical, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return Bank(
        name=content["name"], organ=content["organ"], description=content["description"],
        prototypes=tuple(prototypes), diseases=tuple(diseases),
        sha256=hashlib.sha256(blob.encode("utf-8")).hexdigest(),
    )


# Entries travel with their origin, "FILE: KIND #N ('NAME')", for messages about duplicates.
_Origin = str


def _shipped(file_name: str) -> Path:
    return Path(str(resources.files("indexer.aggregation").joinpath("banks", file_name)))


def _locate(name_or_path: str, base: Path | None, context: str = "") -> tuple[Path, str]:
    """Resolve a bank name or path (relative to ``base``) to (file, label used in messages)."""
    if name_or_path in list_banks():
        return _shipped(f"{name_or_path}.yaml"), f"{name_or_path}.yaml"
    path = Path(name_or_path).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.suffix in (".yaml", ".yml") or path.exists() or "/" in name_or_path:
        return path, str(name_or_path)
    raise BankError(
        f"{context}unknown bank '{name_or_path}' (known: {', '.join(list_banks())}; or a path to a .yaml file)"
    )


def _read_yaml(path: Path, label: str) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BankError(f"bank file {label}: not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BankError(f"bank file {label}: cannot be read ({exc})") from None
    try:
        return yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise BankError(f"bank file {label}: invalid YAML{where}: {problem}") from None


def _resolve(path: Path, label: str, chain: tuple[str, ...]) -> dict[str, Any]:
    """Parse one bank file and, recursively, the bank it extends (whose entries come first)."""
    key = str(path.resolve())
    if key in chain:
        raise BankError(f"bank file {label}: field 'extends' makes a cycle")
    data = _read_yaml(path, label)
    check = _Checker(label)
    if not isinstance(data, dict):
        check.fail("", "must be a mapping with fields 'name' and 'prototypes'")
    check.fields(data, "", _BANK_FIELDS)
    name = check.string(data, "name", "")
    organ = None
    if data.get("organ") is not None:
        organ = check.organs([check.string(data, "organ", "")], "", "organ", allow_any=False)[0]
    description = check.string(data, "description", "") if "description" in data else ""
    parent: dict[str, Any] = {"prototypes": [], "diseases": []}
    if "extends" in data:
        parent_path, parent_label = _locate(check.string(data, "extends", ""), path.parent,
                                            context=f"bank file {label}: field 'extends': ")
        parent = _resolve(parent_path, parent_label, (*chain, key))
    elif "prototypes" not in data:
        check.fail("", "missing field 'prototypes'")
    entries = data.get("prototypes", [])
    if not isinstance(entries, list):
        check.fail("", "field 'prototypes' must be a list")
    own = [(_parse_prototype(entry, n, check), f"{label}: {check.where('prototype', n, _name(entry))}")
           for n, entry in enumerate(entries, start=1)]
    diseases = _parse_diseases(data, label) if "diseases" in data else []
    return {"name": name, "organ": organ, "description": description,
            "prototypes": _merge(parent["prototypes"], own),
            "diseases": _merge(parent["diseases"], diseases)}


def _name(entry: Any) -> Any:
    return entry.get("name") if isinstance(entry, dict) else None


def _parse_prototype(entry: Any, number: int, check: _Checker) -> Prototype:
    where = check.where("prototype", number, _name(entry))
    if not isinstance(entry, dict):
        check.fail(where, f"must be a mapping with fields {', '.join(_PROTOTYPE_FIELDS)}")
    check.fields(entry, where, _PROTOTYPE_FIELDS)
    low, high = DESCRIPTIONS_PER_PROTOTYPE
    return Prototype(
        name=check.string(entry, "name", where),
        organs=check.organs(check.strings(entry, "organs", where, 1, 32), where, "organs", True),
        descriptions=check.strings(entry, "descriptions", where, low, high),
    )


def _parse_diseases(data: Any, label: str) -> list[tuple[Disease, _Origin]]:
    check = _Checker(label)
    if not isinstance(data, dict) or not isinstance(data.get("diseases"), list):
        check.fail("", "field 'diseases' must be a list")
    diseases = []
    for number, entry in enumerate(data["diseases"], start=1):
        where = check.where("disease", number, _name(entry))
        if not isinstance(entry, dict):
            check.fail(where, f"must be a mapping with fields {', '.join(_DISEASE_FIELDS)}")
        check.fields(entry, where, _DISEASE_FIELDS)
        disease = Disease(
            name=check.string(entry, "name", where),
            organ=check.organs([check.string(entry, "organ", where)], where, "organ", False)[0],
            synonyms=check.strings(entry, "synonyms", where, 0, 64) if "synonyms" in entry else (),
            attributes=check.strings(entry, "attributes", where, 1, 32),
        )
        diseases.append((disease, f"{label}: {where}"))
    return _merge([], diseases)


def _merge(first: list, second: list) -> list:
    """Concatenate (entry, origin) lists, rejecting a name (or synonym) claimed twice."""
    owner: dict[str, _Origin] = {}
    for entry, origin in [*first, *second]:
        for term in (entry.name, *getattr(entry, "synonyms", ())):
            key = _normalize_term(term) or term
            if key in owner:
                what = "duplicate name" if term == entry.name else f"duplicate synonym '{term}'"
                raise BankError(f"bank file {origin}: {what} (already used by {owner[key]})")
            owner[key] = origin
    return [*first, *second]


def _normalize_term(text: str) -> str:
    return " ".join(re.findall(r"[0-9a-z]+", text.casefold()))


class _Checker:
    """Field validators raising one-line :class:`BankError` messages for one file."""

    def __init__(self, label: str) -> None:
        self.label = label

    @staticmethod
    def where(kind: str, number: int, name: Any) -> str:
        return f"{kind} #{number} ('{name}')" if isinstance(name, str) and name else f"{kind} #{number}"

    def fail(self, where: str, message: str) -> None:
        raise BankError(f"bank file {self.label}: {where + ': ' if where else ''}{message}")

    def fields(self, entry: dict, where: str, allowed: tuple[str, ...]) -> None:
        for field in entry:
            if field not in allowed:
                self.fail(where, f"unknown field '{field}' (expected {', '.join(allowed)})")

    def string(self, entry: dict, field: str, where: str) -> str:
        if field not in entry:
            self.fail(where, f"missing field '{field}'")
        value = entry[field]
        if not isinstance(value, str) or not value.strip():
            self.fail(where, f"field '{field}' must be a non-empty string")
        return value.strip()

    def strings(self, entry: dict, field: str, where: str, low: int, high: int) -> tuple[str, ...]:
        if field not in entry:
            self.fail(where, f"missing field '{field}'")
        value = entry[field]
        count = f"{low}-{high}" if low != high else str(low)
        if (not isinstance(value, list) or not low <= len(value) <= high
                or not all(isinstance(v, str) and v.strip() for v in value)):
            self.fail(where, f"field '{field}' must be a list of {count} non-empty strings")
        items = tuple(v.strip() for v in value)
        if len(set(items)) != len(items):
            self.fail(where, f"field '{field}' repeats an entry")
        return items

    def organs(self, values: Any, where: str, field: str, allow_any: bool) -> tuple[str, ...]:
        known = (*ORGANS, ANY_ORGAN) if allow_any else ORGANS
        for value in values:
            if value not in known:
                self.fail(where, f"field '{field}': unknown organ '{value}' (known: {', '.join(known)})")
        return tuple(values)
