"""The HTTP API: searches, slide detail, thumbnails, crops, DeepZoom, heatmaps, index info and health.

Search responses are ``retrieval.results.result_json`` (the shape of ``slidesearch search … --json``).
"""

from __future__ import annotations

import time
from typing import Any, Literal, Optional

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response

from retrieval.results import dumps_bytes, result_json
from retrieval.serve.service import Service

router = APIRouter()

Kind = Literal["text", "slide", "patch"]
Mode = Literal["proto", "mean"]
K = Query(10, ge=1, le=100, description="Number of slides to return.")
WHERE = Query(None, max_length=2000, description="SQL filter over slide columns, e.g. `organ = 'lung'` (as `--where`).")
EXCLUDE = Query(None, max_length=200, description="Drop the query slide and slides sharing this column's value "
                                                  "(slide queries and region patch queries).")
MODE = Query("proto", description="Slide queries: proto (prototype slide vectors) or mean (mean-pool); others: proto.")
EXPAND = Query(True, description="Text queries: expand disease names with their knowledge-bank attributes.")
SOURCE = Query(None, pattern="^(image|report|both)$", description="Text queries: image, report or both (default: "
               "both when the index has reports; as `--source`).")
SLIDE_ID = "An indexed slide id."
IMAGE_TYPES = {"content": {"image/png": {}}}
INLINE_K = 20  # unfiltered slide queries up to this k over an in-memory index run on the event loop


class JSON(Response):
    """JSON serialised like the CLI's ``--json`` (numpy values, dates and paths converted)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps_bytes(content)


def _service(request: Request) -> Service:
    return request.app.state.service


async def _upload(request: Request, image: UploadFile):
    """The uploaded image decoded under the query-image limits (bytes checked while reading, then pixels)."""
    from indexer.errors import LimitError
    from indexer.slides.limits import limit
    from retrieval.queries import load_query_image

    cap = limit("MAX_QUERY_BYTES")
    data = await image.read(cap + 1)
    if len(data) > cap:
        raise LimitError(f"uploaded image is over the limit of {cap:,} bytes for a query image")
    name = (image.filename or "uploaded image")[:100]
    pil = load_query_image(data, label=name)
    pil.filename = name
    return pil


@router.get("/api/health", tags=["index"], summary="Liveness and the served version")
def health(request: Request) -> JSON:
    live = _service(request).live
    return JSON({"status": "ok", "version": live.version})


@router.get("/api/info", tags=["index"], summary="Index identity, version, counts and FAISS indexes (as `slidesearch info --json`)")
def info(request: Request) -> JSON:
    return JSON(_service(request).info())


@router.get("/api/search/text", tags=["search"], summary="Text → slide")
def search_text(request: Request, q: str = Query(..., min_length=1, max_length=1000, description="Free text."),
                k: int = K, where: Optional[str] = WHERE, exclude_same: Optional[str] = EXCLUDE, mode: Mode = MODE,
                expand: bool = EXPAND, source: Optional[str] = SOURCE) -> JSON:
    from retrieval.report_search import wants_reports

    service = _service(request)
    searcher = service.live.current()
    if exclude_same is None and mode == "proto" and wants_reports(searcher.catalog, source, ()):
        with service.slot():
            return JSON(result_json(searcher.search_text(q, k=k, where=where, expand=expand, source=source)))
    result = service.search("text", q, k, where, exclude_same, mode, expand)
    return JSON(result_json(result))


@router.get("/api/search/slide", tags=["search"], summary="Slide → slide")
async def search_slide(request: Request, slide_id: str = Query(..., max_length=200, description=SLIDE_ID),
                       k: int = K, where: Optional[str] = WHERE, exclude_same: Optional[str] = EXCLUDE,
                       mode: Mode = MODE) -> Response:
    from starlette.concurrency import run_in_threadpool

    service = _service(request)

    def answer() -> tuple[bytes, float]:
        """The result's JSON bytes, and the search's seconds (for ``Server-Timing``)."""
        start = time.perf_counter()
        result = service.search("slide", slide_id, k, where, exclude_same, mode)
        took = time.perf_counter() - start
        return dumps_bytes(result_json(result)), took

    if where is None and exclude_same is None and k <= INLINE_K and service.in_memory(mode):
        # one in-memory search and its explanation (~1 ms at 100k slides, HNSW): on the event loop, as a thread hop
        # costs as much; a re-ranked index reads stored vectors from disk (~9 ms), so it goes to a thread
        data, took = answer()
    else:
        data, took = await run_in_threadpool(answer)
    return Response(data, media_type=JSON.media_type, headers=server_timing(took))


def server_timing(seconds: float) -> dict[str, str]:
    """A ``Server-Timing`` header with the search's milliseconds (browsers' devtools show it)."""
    return {"Server-Timing": f"search;dur={seconds * 1000:.3f}"}


@router.get("/api/search/patch", tags=["search"], summary="Patch → slide, from a region of an indexed slide")
def search_patch(request: Request,
                 region: str = Query(..., max_length=300, description="SLIDE_ID@x,y,w,h in level-0 px."),
                 k: int = K, where: Optional[str] = WHERE, exclude_same: Optional[str] = EXCLUDE,
                 mode: Mode = MODE) -> JSON:
    result = _service(request).search("patch", region, k, where, exclude_same, mode)
    return JSON(result_json(result))


@router.post("/api/search/patch", tags=["search"], summary="Patch → slide, from an uploaded image")
async def search_patch_upload(request: Request, image: UploadFile = File(..., description="A PNG, JPEG or TIFF patch."),
                              k: int = K, where: Optional[str] = WHERE, mode: Mode = MODE) -> JSON:
    from starlette.concurrency import run_in_threadpool

    pil = await _upload(request, image)
    result = await run_in_threadpool(_service(request).search, "patch", None, k, where, None, mode, True, pil)
    return JSON(result_json(result))


@router.get("/api/slides/{slide_id}", tags=["slides"], summary="A slide's metadata and, given a query, its explanation as a hit")
def slide_detail(request: Request, slide_id: str, kind: Optional[Kind] = Query(None, description="The query's kind."),
                 q: Optional[str] = Query(None, max_length=1000, description="Text, slide id or region of the query."),
                 mode: Mode = MODE, expand: bool = EXPAND) -> JSON:
    return JSON(_service(request).slide_detail(slide_id, kind, q, expand, mode))


@router.get("/api/slides/{slide_id}/matches.geojson", tags=["slides"], response_class=Response,
            summary="The slide's matches for a query as QuPath GeoJSON (the file `search … --geojson` writes)",
            responses={200: {"content": {"application/geo+json": {}}}})
def matches_geojson(request: Request, slide_id: str, kind: Kind = Query(..., description="The query's kind."),
                    q: str = Query(..., max_length=1000, description="Text, slide id or region of the query."),
                    rank: int = Query(1, ge=1, le=100000, description="The hit's rank in the page's result."),
                    mode: Mode = MODE, expand: bool = EXPAND) -> Response:
    from indexer.slide_ids import safe_file_name
    from retrieval.geojson import MEDIA_TYPE, SUFFIX, geojson_bytes, hit_feature_collection
    from retrieval.serve.service import NotFoundError

    hit = _service(request).slide_detail(slide_id, kind, q, expand, mode)["hit"]
    if hit is None:
        raise NotFoundError(f"slide {slide_id[:80]!r} is no hit of this query")
    name = f"{safe_file_name(slide_id)}{SUFFIX}"
    return Response(geojson_bytes(hit_feature_collection({**hit, "rank": rank}, kind, q)), media_type=MEDIA_TYPE,
                    headers={"Content-Disposition": f"attachment; filename=\"{name}\""})


@router.get("/api/slides/{slide_id}/thumbnail.png", tags=["slides"], response_class=Response, responses={200: IMAGE_TYPES})
def thumbnail(request: Request, slide_id: str, max_px: int = Query(256, ge=16, le=1024)) -> Response:
    service = _service(request)
    with service.slot():
        data = service.images.thumbnail(service.slide_meta(slide_id), max_px)
    return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


@router.get("/api/slides/{slide_id}/region.jpeg", tags=["slides"], response_class=Response,
            summary="A level-0 rectangle of a slide (a patch crop)", responses={200: {"content": {"image/jpeg": {}}}})
def region(request: Request, slide_id: str, x: int = Query(..., ge=0), y: int = Query(..., ge=0),
           w: int = Query(..., ge=1), h: int = Query(..., ge=1), max_px: int = Query(128, ge=16, le=512)) -> Response:
    service = _service(request)
    with service.slot():
        data = service.images.crop(service.slide_meta(slide_id), x, y, w, h, max_px)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


@router.get("/api/slides/{slide_id}/image.dzi", tags=["deepzoom"], response_class=Response,
            summary="DeepZoom descriptor (tiles at image_files/LEVEL/COL_ROW.jpeg)",
            responses={200: {"content": {"application/xml": {}}}})
def dzi(request: Request, slide_id: str) -> Response:
    service = _service(request)
    return Response(service.images.dzi(service.slide_meta(slide_id)), media_type="application/xml")


@router.get("/api/slides/{slide_id}/image_files/{level}/{col}_{row}.jpeg", tags=["deepzoom"], response_class=Response,
            summary="One DeepZoom tile", responses={200: {"content": {"image/jpeg": {}}}})
def tile(request: Request, slide_id: str, level: int, col: int, row: int) -> Response:
    service = _service(request)
    with service.slot():
        data = service.images.tile(service.slide_meta(slide_id), level, col, row)
    return Response(data, media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"})


def _heatmap_response(png: bytes, facts: dict) -> Response:
    headers = {f"X-Heatmap-{k.replace('_', '-').title()}": f"{v:g}" for k, v in facts.items()}
    return Response(png, media_type="image/png", headers=headers)


@router.get("/api/slides/{slide_id}/heatmap.png", tags=["slides"], response_class=Response, responses={200: IMAGE_TYPES},
            summary="Patch-level similarity of a query over the slide: a PNG with alpha covering the DeepZoom image")
def heatmap(request: Request, slide_id: str, kind: Kind = Query(..., description="The query's kind."),
            q: str = Query(..., max_length=1000, description="Text, slide id or region SLIDE_ID@x,y,w,h."),
            expand: bool = EXPAND) -> Response:
    return _heatmap_response(*_service(request).heatmap(slide_id, kind, q, expand))


@router.post("/api/slides/{slide_id}/heatmap.png", tags=["slides"], response_class=Response, responses={200: IMAGE_TYPES},
             summary="Heatmap of an uploaded patch over the slide")
async def heatmap_upload(request: Request, slide_id: str, image: UploadFile = File(...)) -> Response:
    from starlette.concurrency import run_in_threadpool

    pil = await _upload(request, image)
    png, facts = await run_in_threadpool(_service(request).heatmap, slide_id, "patch", None, True, pil)
    return _heatmap_response(png, facts)
