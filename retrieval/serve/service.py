"""What the HTTP routes call: searches, slide facts, heatmaps and pixels over the live index.

Every method here is synchronous and may read the disk or run a model: the routes call them in a worker
thread under the server's budget (``retrieval.serve.budget``), never on the event loop. Every slide a
request names goes through ``check_slide_id`` and must be a slide of the index; query strings are never
taken as file paths (the library's ``search_slide`` and ``search_patch`` would open them), and filters go
through the same parser and sandbox as the CLI (``Catalog.allowed_slide_rows``). Each search calls the
same public function as its ``slidesearch search … --json`` command, so the answers are the same.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from indexer.errors import ModelError, QueryError, UserError
from indexer.slides.ids import check_slide_id
from retrieval.query.options import MODES
from retrieval.query.results import SearchResult, hit_json
from retrieval.serve.batching import TextBatcher
from retrieval.serve.budget import Budget, BudgetConfig
from retrieval.serve.images import SlideImages
from retrieval.serve.live import LiveIndex

KINDS = ("text", "slide", "patch")
TEXT_CACHE = 512  # embedded text queries kept (a search and then its heatmaps embed once)
HEATMAP_BYTES = 16 << 20  # a heatmap's image and its PNG, besides the slide's patch features
UPLOAD_SIDE = 2  # an upload is decoded (JPEG) or reduced (others) to at least this many times the model's input side


class NotFoundError(QueryError):
    """A slide id that is valid but not in the index (HTTP 404)."""


class Service:
    """The served index: a live searcher, a shared batched encoder, slide images and the budget for expensive work.

    Args:
        index: the index directory.
        encoder: an encoder to use instead of the manifest's (benchmarks); None loads the manifest's now.
        device: where to load the encoder.
        budget: slots, memory and queue of the expensive work (``BudgetConfig``).
    """

    def __init__(self, index: str | Path, encoder: Any = None, device: str = "auto", budget: BudgetConfig = BudgetConfig()):
        from retrieval.query.catalog import Catalog
        from retrieval.query.arrays import load_index_encoder

        self.encoder_error: str | None = None
        if encoder is None:
            try:
                encoder = load_index_encoder(Catalog(index).manifest, device)
            except UserError as exc:  # slide queries still work; text and patch queries say why not
                self.encoder_error = str(exc)
        self.encoder = TextBatcher(encoder) if encoder is not None else None
        self.live = LiveIndex(index, encoder=self.encoder)
        self.images = SlideImages()
        self.budget = Budget(budget)
        self._text_vectors: OrderedDict[tuple, tuple[np.ndarray, dict]] = OrderedDict()
        self._cases: tuple[Any, Any] = (None, None)  # (searcher, its CaseSearcher)
        self._info: tuple[int, dict] | None = None
        self._lock = threading.Lock()

    # -- searches (each as its CLI command) -----------------------------------------------------
    def search_text(self, query: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                    mode: str = "proto", expand: bool = True, source: str | None = None,
                    has: Sequence[str] = ()) -> SearchResult:
        """`search text`: ``SlideSearcher.search_text`` (report evidence fused when the index has reports)."""
        if exclude_same:
            raise QueryError("exclude_same needs a query slide (a slide query or a region), not a text")
        self._check_mode("text", mode)
        self._need_encoder()
        return self.live.current().search_text(query, k=k, where=where, expand=expand, source=source, has=tuple(has))

    def search_slide(self, slide_id: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                     mode: str = "proto", space: str | None = None, target_stain: str | None = None,
                     group: str | None = None):
        """`search slide` of an indexed slide: a SearchResult, or a CaseResult with ``group='case'``."""
        from retrieval.query.cases import slide_query

        searcher = self.live.current()
        self._check_mode("slide", mode)
        self.slide_row(searcher, slide_id)
        return slide_query(searcher, slide_id, k=k, where=where, exclude_same=exclude_same, mode=mode, space=space,
                           target_stain=target_stain, group=group)

    def search_patch(self, region: str | None, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                     mode: str = "proto", image=None) -> SearchResult:
        """`search patch` of a region of an indexed slide, or of an uploaded ``image`` (decoded PIL image)."""
        searcher = self.live.current()
        self._check_mode("patch", mode)
        patch = image if image is not None else self._region(searcher, region)
        self._need_encoder()
        return searcher.search_patch(patch, k=k, where=where, exclude_same=exclude_same)

    def search_case(self, query: str, k: int = 10, where: str | None = None, exclude_same: str | None = None,
                    target_stain: str | None = None, fusion: str = "mean", space: str | None = None):
        """`search case`: cases like a case (case_id) or an indexed slide, fused over stains (a CaseResult)."""
        return self.cases().search(query, k=k, where=where, exclude_same=exclude_same, target_stain=target_stain,
                                   fusion=fusion, space=space or "proto")

    def search_report(self, text: str, k: int = 10, where: str | None = None, has: Sequence[str] = ()) -> SearchResult:
        """`search report`: slides whose images show the attributes a free report text affirms."""
        from retrieval.query.report_to_slide import search_report

        self._need_encoder()
        return search_report(self.live.current(), text, k=k, where=where, has=tuple(has))

    def cases(self):
        """The CaseSearcher of the current version (its case table is built once per version)."""
        from retrieval.query.cases import CaseSearcher

        searcher = self.live.current()
        with self._lock:
            if self._cases[0] is not searcher:
                self._cases = (searcher, CaseSearcher(searcher))
            return self._cases[1]

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
            return searcher.patch_vector(patch)[0]
        raise QueryError(f"unknown query kind {kind!r}: use text, slide or patch")

    def upload_side(self) -> int | None:
        """The smallest side an uploaded JPEG is decoded at (a few times the model's input), None: full size."""
        size = getattr(self.encoder, "image_size", None) if self.encoder is not None else None
        return UPLOAD_SIDE * int(size) if size else None

    @staticmethod
    def _check_mode(kind: str, mode: str) -> None:
        if mode not in MODES or (kind != "slide" and mode != "proto"):
            raise QueryError(f"mode {mode!r}: slide queries take proto or mean, text and patch queries proto")

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
        from retrieval.query.parse import parse_region

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
            if kind == "text":
                q, details = self._text_vector(searcher, query or "", expand)
                result = searcher.search_text_vector(q, 1, only, query=query or "", details=details)
            elif kind == "slide":
                result = self.search_slide(query or "", k=1, where=only, mode=mode)
            else:
                result = self.search_patch(query, k=1, where=only, mode=mode)
            detail["hit"] = hit_json(result.hits[0]) if result.hits else None
        return detail

    def heatmap_cost(self, slide_id: str) -> int:
        """Bytes a heatmap of this slide holds while it is drawn (its patch features as float32, and the image)."""
        searcher = self.live.current()
        count = int(searcher.arrays.slide_patches[self.slide_row(searcher, slide_id)][1])
        return count * int(searcher.catalog.manifest["encoder"]["dim"]) * 6 + HEATMAP_BYTES

    def heatmap(self, slide_id: str, kind: str, query: str | None, expand: bool = True, image=None
                ) -> tuple[bytes, dict[str, float]]:
        """The PNG heatmap of a query over a slide and its facts (see ``retrieval.serve.heatmap``)."""
        from retrieval.serve.heatmap import heatmap_png

        searcher = self.live.current()
        row = self.slide_row(searcher, slide_id)
        return heatmap_png(searcher, row, self.query_vector(searcher, kind, query, expand, image))

    def info(self) -> dict[str, Any]:
        """``slidesearch info`` of the served version (computed once a version), plus what the server serves."""
        from retrieval.query.catalog import index_info
        from retrieval.query.results import technical_columns

        searcher = self.live.current()
        version = searcher.catalog.snapshot.version.number
        with self._lock:  # the catalog's DuckDB connection is not thread-safe
            if self._info is None or self._info[0] != version:
                self._info = (version, index_info(searcher.catalog))
            info = self._info[1]
        batcher = self.encoder
        return {**info, "served": {"version": info["version"], "encoder": batcher.name if batcher else None,
                                   "encoder_error": self.encoder_error, "technical_columns": technical_columns(),
                                   "text_batches": batcher.batches if batcher else 0,
                                   "texts_encoded": batcher.texts if batcher else 0, "budget": self.budget.stats()}}
