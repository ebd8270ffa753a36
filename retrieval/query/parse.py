"""Turn queries into vectors of the index's space: text (prompt ensemble + knowledge expansion), patches, new slides."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from indexer.aggregation.aggregate import l2_normalize as normalize
from indexer.errors import LimitError, QueryError

# Prompt ensembling: the query is embedded in several phrasings and the unit vectors averaged.
PROMPT_TEMPLATES = (
    "{}",
    "an H&E image of {}.",
    "a histopathology image showing {}.",
    "{}, presented in image.",
)
# With expansion, the query vector is normalize((1 - w)·q + w·a) where a is the mean of the disease's attributes.
EXPANSION_WEIGHT = 0.5
_REGION = re.compile(r"^(?P<slide>.+)@(?P<x>\d+),(?P<y>\d+),(?P<w>\d+),(?P<h>\d+)$")


def embed_text_query(encoder, query: str, bank=None, expand: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
    """Embed a text query with the index's text tower.

    Args:
        encoder: the index's encoder.
        query: free text, e.g. "poorly differentiated adenocarcinoma with necrosis".
        bank: the index's knowledge bank; when ``expand`` and the query names one of its diseases, the
            disease's attributes are embedded and mixed in (KEP-style expansion). A disease named only
            inside a negated or uncertain scope ("no adenocarcinoma", "cannot exclude lymphoma") is not
            expanded (``details["not_expanded"]`` says which and why).
        expand: allow the expansion.

    Returns:
        (unit query vector (d,), details for the explanation: templates and the expansion used).
    """
    query = (query or "").strip()
    if not query:
        raise QueryError("empty text query")
    q = normalize(encoder.encode_text([t.format(query) for t in PROMPT_TEMPLATES]).mean(axis=0))
    details: dict[str, Any] = {"templates": len(PROMPT_TEMPLATES), "expanded_with": None}
    disease = expansion_disease(query, bank, details) if (expand and bank is not None) else None
    if disease is not None and disease.attributes:
        attributes = normalize(normalize(encoder.encode_text(list(disease.attributes))).mean(axis=0))
        q = normalize((1 - EXPANSION_WEIGHT) * q + EXPANSION_WEIGHT * attributes)
        details.update(expanded_with=disease.name, attributes=list(disease.attributes), expansion_weight=EXPANSION_WEIGHT)
    return q, details


def expansion_disease(query: str, bank, details: dict[str, Any] | None = None):
    """The bank disease a query affirms (its name or a synonym outside every negated or uncertain scope), or None.

    When the query names a disease only in such a scope, ``details["not_expanded"]`` records it.
    """
    from indexer.reports.negation import affirmed_text, scopes

    disease = bank.find_disease(affirmed_text(query))
    if disease is None and details is not None:
        named = bank.find_disease(query)
        if named is not None:
            polarity = next((s.polarity for s in scopes(query)), "negated")
            details["not_expanded"] = {"disease": named.name, "polarity": polarity}
    return disease


@dataclass(frozen=True)
class Region:
    """A level-0 rectangle of an indexed slide, written ``SLIDE_ID@x,y,w,h``."""

    slide_id: str
    x: int
    y: int
    w: int
    h: int


def parse_region(text: str) -> Region | None:
    """Parse ``SLIDE_ID@x,y,w,h``; None when ``text`` has no '@'; QueryError when it is malformed.

    >>> parse_region("S01@100,200,448,448")
    Region(slide_id='S01', x=100, y=200, w=448, h=448)
    """
    if "@" not in text:
        return None
    match = _REGION.match(text.strip())
    if not match:
        raise QueryError(f"malformed region {text!r}: expected SLIDE_ID@x,y,w,h with whole numbers")
    region = Region(match["slide"], *(int(match[k]) for k in "xywh"))
    if region.w <= 0 or region.h <= 0:
        raise QueryError(f"malformed region {text!r}: width and height must be positive")
    return region


QUERY_FORMATS = ("PNG", "JPEG", "TIFF", "BMP", "WEBP")  # what a query image may be (no EPS, no plugins that shell out)


def load_query_image(path: str | Path | bytes, label: str | None = None):
    """Open an image (a file, or the bytes of one) as RGB, with a one-line error when it cannot be read or is too large.

    The image may have at most ``MAX_QUERY_BYTES`` bytes and its header at most ``MAX_QUERY_PIXELS``
    px (``indexer.slides.limits``; env ``SLIDESEARCH_MAX_QUERY_BYTES`` / ``_PIXELS``), checked before
    any pixel is decoded (:class:`~indexer.errors.LimitError` when over).

    Args:
        path: an image file, or its bytes (an upload).
        label: how the image is named in errors (default: the path, or "uploaded image").
    """
    return decode_query_image(open_query_image(path, label))


def open_query_image(source, label: str | None = None, min_side: int | None = None):
    """A query image opened lazily (header read and checked as ``load_query_image`` does; no pixel decoded yet).

    Args:
        source: an image file, its bytes, or a binary file object (an upload's spooled file).
        label: how the image is named in errors.
        min_side: decode a JPEG at the smallest DCT scale (1/2, 1/4, 1/8) whose sides stay at least this many px
            (``size`` is then the scaled size): a model that sees a few hundred px needs no 33-MP decode.

    Returns:
        the PIL image, ``label`` as its ``query_label``; ``decode_query_image`` decodes it (and closes it).
    """
    import io

    from PIL import Image

    from indexer.slides.limits import ENV, limit, over_limit, pil_pixel_limit

    if isinstance(source, (bytes, bytearray)):
        label, size, source = label or "uploaded image", len(source), io.BytesIO(source)
    elif hasattr(source, "read"):
        label, size = label or "uploaded image", source.seek(0, io.SEEK_END)
        source.seek(0)
    else:
        path = Path(source)
        if not path.is_file():
            raise QueryError(f"{path}: no such image file")
        label, size, source = label or str(path), path.stat().st_size, path
    cap = limit("MAX_QUERY_BYTES")
    if size > cap:
        raise LimitError(f"{label}: {size:,} bytes is over the limit of {cap:,} bytes for a query image; "
                         f"set {ENV['MAX_QUERY_BYTES']} to raise it")
    with _read_errors(label):
        with pil_pixel_limit(limit("MAX_QUERY_PIXELS")):
            img = Image.open(source, formats=QUERY_FORMATS)
        why = over_limit(*img.size, "MAX_QUERY_PIXELS")
        if why:
            img.close()
            raise LimitError(f"{label}: query image of {why}")
        if min_side and img.format == "JPEG":
            img.draft("RGB", (min_side, min_side))
        img.query_label = label  # never ``filename``: PIL would open a file of that name to map raw pixels
        return img


REDUCIBLE_MODES = frozenset({"L", "LA", "La", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB", "HSV", "I", "F"})


def decode_query_image(img, min_side: int | None = None):
    """The RGB pixels of an image from ``open_query_image`` (closed afterwards), with its one-line errors.

    With ``min_side``, an image larger than twice that on its shorter side is reduced by a whole factor (box
    filter) to a shorter side of at least ``min_side`` px before its RGB conversion, and the full decode is freed
    at once: a model that sees a few hundred px then never holds a second full-size copy.
    """
    label = img.query_label
    with _read_errors(label), img:
        img.load()
        full = img if img.mode in REDUCIBLE_MODES else img.convert("RGB")
        factor = min(full.size) // min_side if min_side else 1
        small = full.reduce(factor) if factor >= 2 else full
        out = small.convert("RGB")
    for image in {id(i): i for i in (img, full, small)}.values():
        if image is not out:
            image.close()
    out.filename = label
    return out


def decode_bytes(img) -> int:
    """Bytes ``decode_query_image`` holds at most for a lazily opened image (its decode at 4 bytes a pixel, 1 for
    1-byte modes, plus an RGB copy where the mode must be converted before it is reduced)."""
    width, height = img.size
    stored = 1 if img.mode in ("1", "L", "P") else 4
    return width * height * (stored + (0 if img.mode in REDUCIBLE_MODES else 4))


class _read_errors:
    """Turn what PIL raises for a corrupt, truncated, unknown or oversized image into one QueryError line."""

    def __init__(self, label: str):
        self.label = label

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, exc, tb) -> bool:
        from PIL import Image

        from indexer.slides.limits import limit

        if exc is None or isinstance(exc, QueryError):
            return False
        if isinstance(exc, Image.DecompressionBombError):
            raise LimitError(f"{self.label}: query image is over the limit of {limit('MAX_QUERY_PIXELS'):,} px") from None
        if isinstance(exc, MemoryError):
            raise QueryError(f"{self.label}: out of memory decoding the query image") from None
        if isinstance(exc, Exception):  # PIL raises many kinds of errors for corrupt files
            raise QueryError(f"{self.label}: not a readable image ({exc.__class__.__name__})") from None
        return False


def read_region_image(slide_path: str, slide_mpp: float, region: Region, magnification: float):
    """Read ``region`` of a slide at the index's magnification (RGB PIL image), within ``MAX_QUERY_PIXELS``."""
    from indexer.slides import open_slide
    from indexer.slides.limits import over_limit

    with open_slide(slide_path, mpp=slide_mpp) as slide:
        width, height = slide.dimensions
        if region.x + region.w > width or region.y + region.h > height:
            raise QueryError(f"region {region} lies outside slide {region.slide_id} ({width}x{height})")
        downsample = (10.0 / magnification) / slide_mpp
        level = slide.best_level_for_downsample(downsample)
        level_ds = slide.level_downsamples[level]
        size = (max(1, round(region.w / level_ds)), max(1, round(region.h / level_ds)))
        why = over_limit(*size, "MAX_QUERY_PIXELS")
        if why:
            raise LimitError(f"region {region}: its read at level {level}, {why}; choose a smaller region")
        img = slide.read_region((region.x, region.y), level, size)
    target = (max(1, round(region.w / downsample)), max(1, round(region.h / downsample)))
    return img if img.size == target else img.resize(target)
