"""Size limits for slides, plain images and query images (module constants, overridable by env vars).

A pyramidal slide is read tile by tile, so its limit only stops absurd headers; a plain image is
decoded whole (about 4 bytes per pixel), so its limit bounds memory. Each limit is read when used:
the environment variable named in ``ENV`` wins over the constant.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from indexer.errors import UserError
from indexer.settings import LIMITS, read

MAX_SLIDE_PIXELS = 2**36  # level-0 px of a pyramid (262,144² px; real slides are < 2**35)
MAX_SLIDE_SIDE = 2**20  # px on either side of level 0
MAX_IMAGE_PIXELS = 2**27  # px of an image decoded whole (11,585² px, ~0.5 GB as RGB)
MAX_QUERY_PIXELS = 2**25  # px of a query image or region read (5,792² px)
MAX_QUERY_BYTES = 64 << 20  # bytes of a query image file
MAX_READ_PIXELS = 2**26  # px of one patch read at its pyramid level (8,192² px)
THUMBNAIL_READ_PIXELS = 2**24  # a thumbnail level larger than this is read in chunks

ENV = LIMITS  # constant name → its environment variable (indexer/settings.py)
_PIL_LOCK = threading.Lock()


def limit(name: str) -> int:
    """The limit ``name`` (a constant of this module): its environment variable when set, else the constant.

    >>> limit("MAX_IMAGE_PIXELS") == MAX_IMAGE_PIXELS or read(ENV["MAX_IMAGE_PIXELS"]) is not None
    True
    """
    default = globals()[name]
    text = (read(ENV[name]) or "").strip() if name in ENV else ""
    if not text:
        return int(default)
    try:
        value = int(float(text))
    except ValueError:
        value = 0
    if value <= 0:
        raise UserError(f"{ENV[name]}={text!r}: expected a positive number")
    return value


def over_limit(width: int, height: int, name: str) -> str | None:
    """Why ``width`` × ``height`` px breaks limit ``name`` (one phrase), or None when it fits."""
    cap = limit(name)
    if width * height <= cap:
        return None
    hint = f"; set {ENV[name]} to raise it" if name in ENV else ""
    return f"{width}x{height} px ({width * height:,} px) is over the limit of {cap:,} px{hint}"


@contextmanager
def pil_pixel_limit(pixels: int) -> Iterator[None]:
    """Let PIL open images of up to ``pixels`` px while in the block, its bomb check otherwise unchanged.

    PIL refuses images over ``2 * Image.MAX_IMAGE_PIXELS``; when ``pixels`` is above that, the
    threshold is raised to ``pixels`` (never disabled) under a lock and restored on exit.
    """
    from PIL import Image

    current = Image.MAX_IMAGE_PIXELS
    if current is None or pixels <= 2 * current:
        yield
        return
    with _PIL_LOCK:
        Image.MAX_IMAGE_PIXELS = pixels // 2 + 1
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = current
