"""Search routes: text, slide (or its cases), patch (a region or an upload), case and report → slide.

Each answers what its ``slidesearch search … --json`` command prints, or CSV with ``format=csv``.
"""

from __future__ import annotations

from typing import Annotated, List, Literal, Optional

from fastapi import APIRouter, Body, File, Query, Request, UploadFile
from fastapi.responses import Response
from pydantic import BaseModel, Field, StringConstraints

from retrieval.query import options
from retrieval.serve.routes import FORMAT, Format, answer, budgeted, search_job, service_of
from retrieval.serve.uploads import with_upload

router = APIRouter()

Mode = Literal[options.MODES]
Fusion = Literal[options.FUSIONS]
Short = Annotated[str, StringConstraints(min_length=1, max_length=200)]
K = options.K.http()
WHERE = options.WHERE.http()
EXCLUDE = options.EXCLUDE_SAME.http("Drop the query slide and slides sharing this column's value (slide and case "
                                    "queries, and region patch queries; as `--exclude-same`).")
MODE = options.MODE.http("Slide queries: proto (prototype slide vectors) or mean (mean-pool); others: proto.")
EXPAND = options.NO_EXPAND.http("Text queries: expand disease names with their knowledge-bank attributes (false: "
                                "as `--no-expand`).")
SOURCE = options.SOURCE.http()
HAS = options.HAS.http()
SPACE = options.SPACE.http()
TARGET_STAIN = options.TARGET_STAIN.http()
SLIDE_ID = Query(..., max_length=200, description="An indexed slide id.")


@router.get("/api/search/text", tags=["search"], summary="Text → slide (as `search text --json`)")
async def search_text(request: Request, q: str = Query(..., min_length=1, max_length=1000, description="Free text."),
                      k: int = K, where: Optional[str] = WHERE, exclude_same: Optional[str] = EXCLUDE, mode: Mode = MODE,
                      expand: bool = EXPAND, source: Optional[str] = SOURCE, has: List[Short] = HAS,
                      format: Format = FORMAT) -> Response:
    search = service_of(request).search_text
    return await budgeted(request, format, lambda: search(q, k, where, exclude_same, mode, expand, source, has))


@router.get("/api/search/slide", tags=["search"], summary="Slide → slide, or its cases with group=case (as `search slide --json`)")
async def search_slide(request: Request, slide_id: str = SLIDE_ID, k: int = K, where: Optional[str] = WHERE,
                       exclude_same: Optional[str] = EXCLUDE, mode: Mode = MODE, space: Optional[str] = SPACE,
                       target_stain: Optional[str] = TARGET_STAIN,
                       group: Optional[Literal[options.GROUPS]] = options.GROUP.http(),
                       format: Format = FORMAT) -> Response:
    search = service_of(request).search_slide
    return await budgeted(request, format,
                          lambda: search(slide_id, k, where, exclude_same, mode, space, target_stain, group))


@router.get("/api/search/patch", tags=["search"], summary="Patch → slide, from a region of an indexed slide")
async def search_patch(request: Request,
                       region: str = Query(..., max_length=300, description="SLIDE_ID@x,y,w,h in level-0 px."),
                       k: int = K, where: Optional[str] = WHERE, exclude_same: Optional[str] = EXCLUDE,
                       mode: Mode = MODE, format: Format = FORMAT) -> Response:
    search = service_of(request).search_patch
    return await budgeted(request, format, lambda: search(region, k, where, exclude_same, mode))


@router.post("/api/search/patch", tags=["search"], summary="Patch → slide, from an uploaded image")
async def search_patch_upload(request: Request, image: UploadFile = File(..., description="A PNG, JPEG, TIFF, BMP or WebP patch."),
                              k: int = K, where: Optional[str] = WHERE, mode: Mode = MODE,
                              format: Format = FORMAT) -> Response:
    service = service_of(request)
    job = search_job(format, lambda pixels: service.search_patch(None, k, where, None, mode, pixels))
    return answer(await with_upload(service.budget, image, job, service.upload_side()))


@router.get("/api/search/case", tags=["search"], summary="Case → case (as `search case --json`)")
async def search_case(request: Request,
                      q: str = Query(..., min_length=1, max_length=200, description="A case_id, or an indexed slide_id."),
                      k: int = K, where: Optional[str] = WHERE, exclude_same: Optional[str] = EXCLUDE,
                      target_stain: Optional[str] = TARGET_STAIN,
                      fusion: Fusion = options.FUSION.http(),
                      space: Optional[str] = SPACE, format: Format = FORMAT) -> Response:
    search = service_of(request).search_case
    return await budgeted(request, format, lambda: search(q, k, where, exclude_same, target_stain, fusion, space))


REPORT_TEXT = "Free report text; attributes it affirms are searched, negated ones left out."


@router.get("/api/search/report", tags=["search"], summary="Report → slide (as `search report --json`)")
async def search_report(request: Request, text: str = Query(..., min_length=1, max_length=8000, description=REPORT_TEXT),
                        k: int = K, where: Optional[str] = WHERE, has: List[Short] = HAS,
                        format: Format = FORMAT) -> Response:
    search = service_of(request).search_report
    return await budgeted(request, format, lambda: search(text, k, where, has))


class ReportQuery(BaseModel):
    """A report → slide query in a POST body (for reports too long for a URL)."""

    text: str = Field(..., min_length=1, max_length=100_000, description=REPORT_TEXT)


@router.post("/api/search/report", tags=["search"], summary="Report → slide, the report in a JSON body")
async def search_report_post(request: Request, body: ReportQuery = Body(...), k: int = K, where: Optional[str] = WHERE,
                             has: List[Short] = HAS, format: Format = FORMAT) -> Response:
    search = service_of(request).search_report
    return await budgeted(request, format, lambda: search(body.text, k, where, has))
