"""Slide routes: a slide's metadata and explanation, thumbnails, crops, DeepZoom tiles and query heatmaps.

Each reads slide files or patch features, so each runs in a worker thread under the server's budget, in its
pixels lane (a slide's detail, a search of one slide, in its search lane).
"""

from __future__ import annotations

from typing import Literal, Optional

from fastapi import APIRouter, File, Query, Request, UploadFile
from fastapi.responses import Response

from retrieval.serve.routes import JSON, service_of
from retrieval.serve.routes_search import EXPAND, MODE, Mode
from retrieval.serve.uploads import with_upload

router = APIRouter()

Kind = Literal["text", "slide", "patch"]
IMAGE_TYPES = {"content": {"image/png": {}}}
JPEG_TYPES = {"content": {"image/jpeg": {}}}
CACHED = {"Cache-Control": "private, max-age=3600"}


def _image(data: bytes, media: str) -> Response:
    return Response(data, media_type=media, headers=CACHED)


@router.get("/api/slides/{slide_id}", tags=["slides"], summary="A slide's metadata and, given a query, its explanation as a hit")
async def slide_detail(request: Request, slide_id: str, kind: Optional[Kind] = Query(None, description="The query's kind."),
                       q: Optional[str] = Query(None, max_length=1000, description="Text, slide id or region of the query."),
                       mode: Mode = MODE, expand: bool = EXPAND) -> JSON:
    service = service_of(request)
    return JSON(await service.budget.run(service.slide_detail, slide_id, kind, q, expand, mode, lane="search"))


@router.get("/api/slides/{slide_id}/matches.geojson", tags=["slides"], response_class=Response,
            summary="The slide's matches for a query as QuPath GeoJSON (the file `search … --geojson` writes)",
            responses={200: {"content": {"application/geo+json": {}}}})
async def matches_geojson(request: Request, slide_id: str, kind: Kind = Query(..., description="The query's kind."),
                          q: str = Query(..., max_length=1000, description="Text, slide id or region of the query."),
                          rank: int = Query(1, ge=1, le=100000, description="The hit's rank in the page's result."),
                          mode: Mode = MODE, expand: bool = EXPAND) -> Response:
    from indexer.slides.ids import safe_file_name
    from retrieval.query.geojson import MEDIA_TYPE, SUFFIX, geojson_bytes, hit_feature_collection
    from retrieval.serve.service import NotFoundError

    service = service_of(request)
    detail = await service.budget.run(service.slide_detail, slide_id, kind, q, expand, mode, lane="search")
    if detail["hit"] is None:
        raise NotFoundError(f"slide {slide_id[:80]!r} is no hit of this query")
    name = f"{safe_file_name(slide_id)}{SUFFIX}"
    return Response(geojson_bytes(hit_feature_collection({**detail["hit"], "rank": rank}, kind, q)),
                    media_type=MEDIA_TYPE, headers={"Content-Disposition": f"attachment; filename=\"{name}\""})


@router.get("/api/slides/{slide_id}/thumbnail.png", tags=["slides"], response_class=Response, responses={200: IMAGE_TYPES})
async def thumbnail(request: Request, slide_id: str, max_px: int = Query(256, ge=16, le=1024)) -> Response:
    service = service_of(request)
    data = await service.budget.run(lambda: service.images.thumbnail(service.slide_meta(slide_id), max_px))
    return _image(data, "image/png")


@router.get("/api/slides/{slide_id}/region.jpeg", tags=["slides"], response_class=Response,
            summary="A level-0 rectangle of a slide (a patch crop)", responses={200: JPEG_TYPES})
async def region(request: Request, slide_id: str, x: int = Query(..., ge=0, le=2**31), y: int = Query(..., ge=0, le=2**31),
                 w: int = Query(..., ge=1, le=2**31), h: int = Query(..., ge=1, le=2**31),
                 max_px: int = Query(128, ge=16, le=512)) -> Response:
    service = service_of(request)
    data = await service.budget.run(lambda: service.images.crop(service.slide_meta(slide_id), x, y, w, h, max_px))
    return _image(data, "image/jpeg")


@router.get("/api/slides/{slide_id}/image.dzi", tags=["deepzoom"], response_class=Response,
            summary="DeepZoom descriptor (tiles at image_files/LEVEL/COL_ROW.jpeg)",
            responses={200: {"content": {"application/xml": {}}}})
async def dzi(request: Request, slide_id: str) -> Response:
    service = service_of(request)
    data = await service.budget.run(lambda: service.images.dzi(service.slide_meta(slide_id)))
    return Response(data, media_type="application/xml")


@router.get("/api/slides/{slide_id}/image_files/{level}/{col}_{row}.jpeg", tags=["deepzoom"], response_class=Response,
            summary="One DeepZoom tile", responses={200: JPEG_TYPES})
async def tile(request: Request, slide_id: str, level: int, col: int, row: int) -> Response:
    service = service_of(request)
    data = await service.budget.run(lambda: service.images.tile(service.slide_meta(slide_id), level, col, row))
    return _image(data, "image/jpeg")


def _heatmap_response(png: bytes, facts: dict) -> Response:
    headers = {f"X-Heatmap-{k.replace('_', '-').title()}": f"{v:g}" for k, v in facts.items()}
    return Response(png, media_type="image/png", headers=headers)


@router.get("/api/slides/{slide_id}/heatmap.png", tags=["slides"], response_class=Response, responses={200: IMAGE_TYPES},
            summary="Patch-level similarity of a query over the slide: a PNG with alpha covering the DeepZoom image")
async def heatmap(request: Request, slide_id: str, kind: Kind = Query(..., description="The query's kind."),
                  q: str = Query(..., max_length=1000, description="Text, slide id or region SLIDE_ID@x,y,w,h."),
                  expand: bool = EXPAND) -> Response:
    service = service_of(request)
    cost = service.heatmap_cost(slide_id)
    return _heatmap_response(*await service.budget.run(service.heatmap, slide_id, kind, q, expand, cost=cost))


@router.post("/api/slides/{slide_id}/heatmap.png", tags=["slides"], response_class=Response, responses={200: IMAGE_TYPES},
             summary="Heatmap of an uploaded patch over the slide")
async def heatmap_upload(request: Request, slide_id: str, image: UploadFile = File(...)) -> Response:
    service = service_of(request)
    cost = service.heatmap_cost(slide_id)  # an unknown slide is refused before the upload is read
    png, facts = await with_upload(service.budget, image, lambda pixels: service.heatmap(slide_id, "patch", None, True, pixels),
                                   service.upload_side(), cost)
    return _heatmap_response(png, facts)
