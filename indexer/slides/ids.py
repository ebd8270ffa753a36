"""Slide ids: derived from file names, validated by one rule, and never used as paths (safe file names)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from urllib.parse import quote

from indexer.errors import UserError

SLIDE_SUFFIXES = frozenset({
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
    ".png", ".jpg", ".jpeg",
})
COMPOUND_SUFFIXES = (".ome.tiff", ".ome.tif")
MAX_ID_LENGTH = 200
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")  # Unicode categories Cc and Cs, exactly
RULE = (f"a slide id is 1-{MAX_ID_LENGTH} characters, not '.' or '..', without '/', '\\' or control characters")


def slide_id_from_name(name: str) -> str:
    """The slide id of a file name or path: the name without its slide suffix (``.ome.tiff`` counts as one).

    >>> slide_id_from_name("a/b/A.ome.tiff"), slide_id_from_name("S1.svs"), slide_id_from_name("S1"), slide_id_from_name("x.v2.svs")
    ('A', 'S1', 'S1', 'x.v2')
    """
    base = Path(str(name).replace("\\", "/")).name
    lower = base.lower()
    for suffix in COMPOUND_SUFFIXES:
        if lower.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    stem, dot, suffix = base.rpartition(".")
    return stem if dot and stem and f".{suffix.lower()}" in SLIDE_SUFFIXES else base


def check_slide_id(slide_id: str) -> str:
    """Return ``slide_id`` when it follows :data:`RULE`; raise a one-line UserError otherwise.

    >>> check_slide_id("TCGA-A1-0001")
    'TCGA-A1-0001'
    """
    text = str(slide_id)
    bad = (not text or len(text) > MAX_ID_LENGTH or text in (".", "..") or "/" in text or "\\" in text
           or _CONTROL.search(text) is not None)
    if bad:
        shown = repr(text[:60]) + ("..." if len(text) > 60 else "")
        raise UserError(f"invalid slide id {shown}: {RULE}")
    return text


def safe_file_name(slide_id: str) -> str:
    """A file name for ``slide_id`` that stays inside its folder: percent-encoded, hashed when long.

    >>> safe_file_name("a b/../c"), safe_file_name(".hidden")
    ('a%20b%2F..%2Fc', '%2Ehidden')
    """
    name = quote(str(slide_id), safe="-_.~")
    if name.startswith("."):
        name = "%2E" + name[1:]
    if len(name) > 120:
        name = name[:60] + "~" + hashlib.sha256(str(slide_id).encode()).hexdigest()[:32]
    return name
