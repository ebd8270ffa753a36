"""The FastAPI application: routes, JSON errors, the upload size bound, the page and its npm libraries."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from indexer.errors import LimitError, ModelError, SlideError, UserError
from indexer.slides.limits import limit

STATIC = Path(__file__).resolve().parent / "static"
NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"  # `npm ci` in the checkout (scripts/env.sh)
OPENSEADRAGON = NODE_MODULES / "openseadragon" / "build" / "openseadragon"
BODY_SLACK = 64 << 10  # multipart framing allowed on top of the query-image byte limit
log = logging.getLogger("slidesearch.serve")


def create_app(index: str | Path, encoder: Any = None, device: str = "auto", cors_origins: Sequence[str] = (),
               max_concurrent: int | None = None) -> FastAPI:
    """The app serving ``index`` (opened, warmed and with its encoder loaded before this returns).

    Args:
        index: the index directory.
        encoder: an encoder to use instead of the index's own (benchmarks with synthetic indexes).
        device: where to load the encoder.
        cors_origins: origins allowed to call the API from other pages (none: CORS stays off).
        max_concurrent: expensive requests running at once (default: CPU count).
    """
    from retrieval.serve.routes import router
    from retrieval.serve.service import NotFoundError, Service

    service = Service(index, encoder=encoder, device=device, max_concurrent=max_concurrent)
    app = FastAPI(title="slidesearch", version="1", description="Read-only text, slide and patch search over one "
                  "slide index, with DeepZoom tiles and query heatmaps for its viewer.")
    app.state.service = service
    app.include_router(router)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        status = (413 if isinstance(exc, LimitError) else 404 if isinstance(exc, (NotFoundError, SlideError))
                  else 503 if isinstance(exc, ModelError) else 400)
        return error(status, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "path", "body"))
        return error(422, f"{where}: {first.get('msg', 'invalid request')}" if where else first.get("msg", "invalid request"))

    @app.exception_handler(HTTPException)
    async def http_error(_: Request, exc: HTTPException) -> JSONResponse:
        return error(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        if isinstance(exc, MemoryError):
            return error(503, "out of memory answering this request")
        log.exception("error answering %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if OPENSEADRAGON.is_dir():
        app.mount("/vendor/openseadragon", StaticFiles(directory=OPENSEADRAGON), name="openseadragon")
    else:
        log.warning("OpenSeadragon is missing (%s): run `npm ci` in the checkout; the page's viewer is off", OPENSEADRAGON)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"])
    app.add_middleware(BodyLimit)
    return app


class BodyLimit:
    """ASGI middleware: a request body over the query-image byte limit (plus framing) gets 413, however it is sent."""

    def __init__(self, app: Any):
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or ()
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if declared is None and not any(name == b"transfer-encoding" for name, _ in headers):
            return await self.app(scope, receive, send)  # HTTP/1.1: neither header, no body
        cap = limit("MAX_QUERY_BYTES") + BODY_SLACK

        async def too_large() -> None:
            response = JSONResponse({"error": f"request body is over the limit of {cap:,} bytes"}, status_code=413)
            await response(scope, receive, send)

        if declared is not None and declared.isdigit() and int(declared) > cap:
            return await too_large()
        seen = 0

        async def counted() -> dict:
            nonlocal seen
            if seen > cap:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > cap:  # the app stops reading; whatever it answers is replaced by the 413
                    return {"type": "http.disconnect"}
            return message

        async def replaced(message: dict) -> None:
            if seen <= cap:
                await send(message)
            elif message["type"] == "http.response.start":
                await too_large()

        await self.app(scope, counted, replaced)
