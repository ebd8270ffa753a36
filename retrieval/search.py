"""``SlideSearcher``: text → slide, slide → slide and patch → slide search over one index (the Python API).

A thin façade over the query pipeline in ``retrieval/query/`` (see its package docstring): it opens the index
(``OpenIndex``) and hands each query to its source (``query/text.py``, ``query/image.py``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from retrieval.query import image as image_source
from retrieval.query.explain import build_hits, explain_pairs
from retrieval.query.index import OpenIndex
from retrieval.query.results import SearchHit, SearchResult


class SlideSearcher(OpenIndex):
    """Open an index once, then run text, slide and patch queries against it.

    Args:
        index: the index directory.
        encoder: an already loaded encoder (default: the one named in the manifest, loaded on first use).
        device: where to load the encoder.
    """

    def search_text(self, query: str, k: int = 10, where: str | None = None, expand: bool = True,
                    source: str | None = None, has: tuple[str, ...] = ()) -> SearchResult:
        """Slides matching a free-text description (``retrieval/query/image.py`` for the image scoring).

        Args:
            source: ``image``, ``report`` or ``both`` (None: both when the index has reports); report
                evidence is fused by ``retrieval/query/text.py``.
            has: report attribute filters (``X``, ``not X``, ``maybe X``).
        """
        from retrieval.query.text import search_text

        return search_text(self, query, k, where, expand, source, has)

    def text_vector(self, query: str, where: str | None = None, expand: bool = True) -> tuple[np.ndarray, dict[str, Any]]:
        """The unit query vector (d,) of a text and how it was built; a bad ``where`` fails before the model loads."""
        from retrieval.query.text import text_vector

        return text_vector(self, query, where, expand)

    def search_text_vector(self, q: np.ndarray, k: int = 10, where: str | None = None, query: str = "",
                           details: dict[str, Any] | None = None, allowed: np.ndarray | None = None) -> SearchResult:
        """Text search from an already embedded query vector (d,); ``allowed`` (slide rows) replaces ``where``."""
        return image_source.search_text_vector(self, q, k, where, query, details, allowed)

    def search_slide(self, slide: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                     mode: str = "proto") -> SearchResult:
        """Slides that look like an indexed slide (by slide_id) or a new slide file (``image_source.search_slide``)."""
        return image_source.search_slide(self, slide, k, where, exclude_same, mode)

    def search_patch(self, image, k: int = 10, where: str | None = None,
                     exclude_same: str | None = None) -> SearchResult:
        """Slides containing tissue like an image path, a PIL image, or ``SLIDE_ID@x,y,w,h`` (``image_source.search_patch``)."""
        return image_source.search_patch(self, image, k, where, exclude_same)

    def patch_vector(self, image) -> tuple[np.ndarray, int | None]:
        """The embedding (d,) of a query patch and its slide_row when it is a region."""
        return image_source.patch_vector(self, image)

    def slide_hits(self, rows, scores, query_vec: np.ndarray) -> tuple[SearchHit, ...]:
        """Hits for slide ``rows`` (rank order) explained against a ProAlign vector, as slide → slide explains them."""
        rows = np.asarray(rows, np.int64)
        protos, patches = explain_pairs(self, np.asarray(query_vec, np.float32), rows)
        return build_hits(self.arrays, rows, np.asarray(scores, np.float64), protos, patches)

