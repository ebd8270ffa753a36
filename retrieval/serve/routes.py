"""The HTTP API's shared parts (JSON and CSV answers, budgeted jobs) and its own-path routes: health and info.

Every route is ``async`` and waits for nothing on the event loop: expensive work (searches, encoding, decoded
uploads, slide reads, heatmaps) runs in a worker thread under the server's budget (``Budget.run``); health
answers from memory and info from a cache filled by a thread of its own, so neither queues behind searches.
Search answers are ``retrieval.query.results.result_json`` (the shape of ``slidesearch search … --json``), or CSV.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from retrieval.query.results import SearchResult, dumps_bytes, result_csv, result_json
from retrieval.serve.service import Service

router = APIRouter()

Format = Literal["json", "csv"]
FORMAT = Query("json", description="json (as `search … --json`) or csv (rank, slide_id, score, the metadata columns).")


class JSON(Response):
    """JSON serialised like the CLI's ``--json`` (numpy values, dates and paths converted)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return dumps_bytes(content)


def service_of(request: Request) -> Service:
    """The app's ``Service``."""
    return request.app.state.service


def rendered(result: Any, fmt: str) -> tuple[bytes, str, dict[str, str]]:
    """Body, media type and headers of a search result (SearchResult or CaseResult) as JSON or CSV."""
    data = result_json(result) if isinstance(result, SearchResult) else result.to_dict()
    if fmt == "csv":
        name = f"slidesearch-{data['kind']}.csv"
        return (result_csv(data).encode("utf-8"), "text/csv; charset=utf-8",
                {"Content-Disposition": f'attachment; filename="{name}"'})
    return dumps_bytes(data), JSON.media_type, {}


def search_job(fmt: str, search: Callable[..., Any]) -> Callable[..., tuple]:
    """A worker-thread job: run ``search(*args)`` and render its result, timing the search alone."""
    def job(*args: Any) -> tuple:
        start = time.perf_counter()
        result = search(*args)
        took = time.perf_counter() - start
        return rendered(result, fmt), took

    return job


def answer(out: tuple) -> Response:
    """The Response of a ``search_job``'s output, with ``Server-Timing``."""
    (body, media, headers), took = out
    return Response(body, media_type=media, headers={**headers, **server_timing(took)})


async def budgeted(request: Request, fmt: str, search: Callable[[], Any], cost: int = 0) -> Response:
    """Run ``search()`` under the budget (its search lane) in a worker thread and answer its result as ``fmt``."""
    return answer(await service_of(request).budget.run(search_job(fmt, search), cost=cost, lane="search"))


def server_timing(seconds: float) -> dict[str, str]:
    """A ``Server-Timing`` header with the search's milliseconds (browsers' devtools show it)."""
    return {"Server-Timing": f"search;dur={seconds * 1000:.3f}"}


@router.get("/api/health", tags=["index"], summary="Liveness and the served version (no token needed)")
async def health(request: Request) -> JSON:
    return JSON({"status": "ok", "version": service_of(request).live.version})


@router.get("/api/info", tags=["index"], summary="Index identity, version, counts and FAISS indexes (as `slidesearch info --json`)")
async def info(request: Request) -> JSON:
    import anyio

    service = service_of(request)
    return JSON(await anyio.to_thread.run_sync(service.info, limiter=request.app.state.control))
