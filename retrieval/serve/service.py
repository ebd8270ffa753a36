"""What the HTTP routes call: searches, slide facts, heatmaps and pixels over the live index, with bounded work.

Every slide a request names goes through ``check_slide_id`` and must be a slide of the index; query
strings are never taken as file paths (the library's ``search_slide`` and ``search_patch`` would open
them), and filters go through the same parser and sandbox as the CLI (``Catalog.allowed_slide_rows``).
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from indexer.errors import ModelError, QueryError, UserError
from indexer.slide_ids import check_slide_id
from retrieval.results import SearchResult, hit_json
from retrieval.serve.batching import TextBatcher
from retrieval.serve.images import SlideImages
from retrieval.serve.live import LiveIndex

KINDS = ("text", "slide", "patch")
MODES = ("proto", "mean")
TEXT_CACHE = 512  # embedded text queries kept (a search and then its heatmaps embed once)


class NotFoundError(QueryError):
    """A slide id that is valid but not in the index (HTTP 404)."""


class Service:
    """The served index: a live searcher, a shared batched encoder, slide images and bounds on expensive work.

    Args:
        index: the index directory.
        encoder: an encoder to use instead of the manifest's (benchmarks); None loads the manifest's now.
        device: where to load the encoder.
        max_concurrent: searches, heatmaps and slide reads running at once (default: CPU count, at least 2).
    """

    def __init__(self, index: str | Path, encoder: Any = None, device: str = "auto", max_concurrent: int | None = None):
        from retrieval.catalog import Catalog
        from retrieval.search_support import load_index_encoder

        self.encoder_error: str | None = None
        if encoder is None:
            try:
                encoder = load_index_encoder(Catalog(index).manifest, device)
            except UserError as exc:  # slide queries still work; text and patch queries say why not
                self.encoder_error = str(exc)
        self.encoder = TextBatcher(encoder) if encoder is not None else None
        self.live = LiveIndex(index, encoder=self.encoder)
        self.images = SlideImages()
        self._slots = threading.BoundedSemaphore(max_concurrent or max(2, os.cpu_count() or 2))
        self._text_vectors: OrderedDict[tuple, tuple[np.ndarray, dict]] = OrderedDict()
        self._lock = threading.Lock()

    @contextmanager
    def slot(self) -> Iterator[None]:
        """Hold one of the ``max_concurrent`` slots for expensive work."""
        with self._slots:
            yield

    # -- searches ---------------------------------------------------------------------------
    def search(self, kind: str, query: str | None, k: int = 10, where: str | None = None,
               exclude_same: str | None = None, mode: str = "proto", expand: bool = True, image=None) -> SearchResult:
        """Run a text, slide or patch query (``query``: text, a slide id, a region; or an uploaded ``image``)."""
        searcher = self.live.current()
        if kind not in KINDS:
            raise QueryError(f"unknown query kind {kind!r}: use text, slide or patch")
        if mode not in MODES or (kind != "slide" and mode != "proto"):
            raise QueryError(f"mode {mode!r}: slide queries take proto or mean, text and patch queries proto")
        if kind == "text":
            if exclude_same:
                raise QueryError("exclude_same needs a query slide (a slide query or a region), not a text")
            q, details = self._text_vector(searcher, query or "", expand)
            with self.slot():
                return searcher.search_text_vector(q, k, where, query=query or "", details=details)
        if kind == "slide":
            self.slide_row(searcher, query or "")
            with self.slot():
                return searcher.search_slide(query, k=k, where=where, exclude_same=exclude_same, mode=mode)
        patch = image if image is not None else self._region(searcher, query)
        self._need_encoder()
        with self.slot():
            return searcher.search_patch(patch, k=k, where=where, exclude_same=exclude_same)

    def in_memory(self, mode: str = "proto") -> bool:
        """Whether slide queries in ``mode`` search memory alone (not a compressed index re-ranked from disk)."""
        from indexer.store.rerank import RerankedIndex

        index = self.live.current().catalog.faiss("slides_mean" if mode == "mean" else "slides")
        return not isinstance(index, RerankedIndex)

    def query_vector(self, searcher, kind: str, query: str | None, expand: bool = True, image=None) -> np.ndarray:
        """The patch-space vector (d,) of a query, as heatmaps compare it to patches (a slide: its mean-pool vector)."""
        if kind == "text":
            return self._text_vector(searcher, query or "", expand)[0]
        if kind == "slide":
            row = self.slide_row(searcher, query or "")
            return searcher.arrays.slide_vector(searcher.catalog, row, "slides_mean")
        if kind == "patch":
            patch = image if image is not None else self._region(searcher, query)
            self._need_encoder()
            with self.slot():
                return searcher.patch_vector(patch)[0]
        raise QueryError(f"unknown query kind {kind!r}: use text, slide or patch")

    def _text_vector(self, searcher, query: str, expand: bool) -> tuple[np.ndarray, dict]:
        key = (query, expand)
        with self._lock:
            if key in self._text_vectors:
                self._text_vectors.move_to_end(key)
                return self._text_vectors[key]
        self._need_encoder()
        value = searcher.text_vector(query, None, expand)  # concurrent calls share one batch (TextBatcher)
        with self._lock:
            self._text_vectors[key] = value
            while len(self._text_vectors) > TEXT_CACHE:
                self._text_vectors.popitem(last=False)
        return value

    def _region(self, searcher, query: str | None) -> str:
        from retrieval.queries import parse_region

        region = parse_region(query or "")
        if region is None:
            raise QueryError("a patch query is a region SLIDE_ID@x,y,w,h (level-0 px), or an uploaded image")
        self.slide_row(searcher, region.slide_id)
        return query

    def _need_encoder(self) -> None:
        if self.encoder is None:
            raise ModelError(f"text and patch queries need the index's encoder, which is not available: {self.encoder_error}")

    # -- slides -----------------------------------------------------------------------------
    def slide_row(self, searcher, slide_id: str) -> int:
        """The slide_row of an indexed slide id (UserError for an invalid id, NotFoundError for an unknown one)."""
        check_slide_id(slide_id)
        row = searcher.arrays.row_of(slide_id)
        if row is None:
            shown = repr(slide_id[:80]) + ("..." if len(slide_id) > 80 else "")
            raise NotFoundError(f"unknown slide {shown}: not a slide of this index")
        return row

    def slide_meta(self, slide_id: str) -> dict[str, Any]:
        """The stored row of an indexed slide (its path is what the image routes open, nothing else)."""
        searcher = self.live.current()
        return searcher.arrays.metadata[self.slide_row(searcher, slide_id)]

    def slide_detail(self, slide_id: str, kind: str | None = None, query: str | None = None,
                     expand: bool = True, mode: str = "proto") -> dict[str, Any]:
        """A slide's metadata, geometry and, given a query, the explanation of it as a hit of that query."""
        searcher = self.live.current()
        row = self.slide_row(searcher, slide_id)
        meta = searcher.arrays.metadata[row]
        start, count = (int(v) for v in searcher.arrays.slide_patches[row])
        detail = {"slide_id": slide_id, "slide_row": row, "metadata": meta, "n_patches": count,
                  "dimensions": [meta["width"], meta["height"]], "version": searcher.catalog.snapshot.version.number,
                  "hit": None}
        if kind:
            only = "slide_id = '" + slide_id.replace("'", "''") + "'"
            result = self.search(kind, query, k=1, where=only, mode=mode, expand=expand)
            detail["hit"] = hit_json(result.hits[0]) if result.hits else None
        return detail

    def heatmap(self, slide_id: str, kind: str, query: str | None, expand: bool = True, image=None
                ) -> tuple[bytes, dict[str, float]]:
        """The PNG heatmap of a query over a slide and its facts (see ``retrieval.serve.heatmap``)."""
        from retrieval.serve.heatmap import heatmap_png

        searcher = self.live.current()
        row = self.slide_row(searcher, slide_id)
        q = self.query_vector(searcher, kind, query, expand, image)
        with self.slot():
            return heatmap_png(searcher, row, q)

    def info(self) -> dict[str, Any]:
        """``slidesearch info`` of the served version, plus what the server serves."""
        from retrieval.catalog import index_info

        searcher = self.live.current()
        with self._lock:  # the catalog's DuckDB connection is not thread-safe
            info = index_info(searcher.catalog)
        encoder = None if self.encoder is None else self.encoder.name
        batcher = self.encoder
        return {**info, "served": {"version": info["version"], "encoder": encoder, "encoder_error": self.encoder_error,
                                   "text_batches": batcher.batches if batcher else 0,
                                   "texts_encoded": batcher.texts if batcher else 0}}
