"""The FastAPI application: routes, JSON errors, access control, the upload size bound, the page and its viewer."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException

from indexer.errors import LimitError, ModelError, SlideError, UserError
from indexer.slides.limits import limit
from retrieval.serve.budget import BudgetConfig, BusyError

STATIC = Path(__file__).resolve().parent / "static"
PACKAGED_VIEWER = Path(__file__).resolve().parent / "vendor" / "openseadragon"  # put into the wheel by setup.py
NODE_MODULES = Path(__file__).resolve().parents[2] / "node_modules"  # `npm ci` in the checkout (scripts/env.sh)
BODY_SLACK = 64 << 10  # multipart framing allowed on top of the query-image byte limit
SMALL_BODY = 1 << 20  # a body up to this (a report, a small patch) is not counted against MAX_BODIES
MAX_BODIES = 32  # requests with a larger (or unsized) body in the server at once: 32 × 64 MiB spooled at most
log = logging.getLogger("slidesearch.serve")


def viewer_folder() -> Path | None:
    """OpenSeadragon's build: packaged in the wheel, else the checkout's ``node_modules`` (None: neither)."""
    for folder in (PACKAGED_VIEWER, NODE_MODULES / "openseadragon" / "build" / "openseadragon"):
        if (folder / "openseadragon.min.js").is_file():
            return folder
    return None


def create_app(index: str | Path, encoder: Any = None, device: str = "auto", cors_origins: Sequence[str] = (),
               max_concurrent: int | None = None, *, budget: BudgetConfig | None = None,
               allowed_hosts: Iterable[str] = (), token: str | None = None, audit_log: Path | None = None) -> FastAPI:
    """The app serving ``index`` (opened, warmed and with its encoder loaded before this returns).

    Args:
        index: the index directory.
        encoder: an encoder to use instead of the index's own (benchmarks with synthetic indexes).
        device: where to load the encoder.
        cors_origins: origins allowed to call the API from other pages (none: CORS stays off).
        max_concurrent: expensive requests running at once (default: CPU count); ``budget.slots`` wins.
        budget: the budget of expensive work (slots, memory, queue; ``BudgetConfig``).
        allowed_hosts: Host names answered besides localhost, 127.0.0.1 and [::1].
        token: the bearer token every ``/api/`` route but health requires (None: no token).
        audit_log: a file to append one JSON line per API request to.
    """
    import anyio

    from retrieval.serve.access import AuditLog, Gate
    from retrieval.serve.routes import router
    from retrieval.serve.routes_search import router as search_router
    from retrieval.serve.routes_slides import router as slides_router
    from retrieval.serve.service import NotFoundError, Service

    budget = budget or BudgetConfig(slots=max_concurrent)
    audit = AuditLog(Path(audit_log)) if audit_log is not None else None
    service = Service(index, encoder=encoder, device=device, budget=budget)
    service.info()  # computed once a version; /api/info then answers from memory
    app = FastAPI(title="slidesearch", version="1", description="Read-only text, slide, patch, case and report search "
                  "over one slide index, with DeepZoom tiles and query heatmaps for its viewer.")
    app.state.service = service
    app.state.control = anyio.CapacityLimiter(1)  # info's own thread: never behind the budget's jobs
    for r in (router, search_router, slides_router):
        app.include_router(r)

    def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(UserError)
    async def user_error(_: Request, exc: UserError) -> JSONResponse:
        if isinstance(exc, BusyError):
            return error(503, str(exc), {"Retry-After": str(exc.retry_after)})
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
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    viewer = viewer_folder()
    if viewer is not None:
        app.mount("/vendor/openseadragon", StaticFiles(directory=viewer), name="openseadragon")
    else:
        log.warning("OpenSeadragon is missing (neither %s nor %s): run `npm ci` in the checkout; the page's viewer is off",
                    PACKAGED_VIEWER, NODE_MODULES)
    if cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])
    app.add_middleware(BodyLimit)
    app.add_middleware(Gate, allowed_hosts=allowed_hosts, token=token, audit=audit)  # outermost: first to see a request
    return app


class BodyLimit:
    """ASGI middleware: a request body over the query-image byte limit (plus framing) gets 413, however it is sent;
    past ``MAX_BODIES`` requests with a large body in the server at once (uploads are spooled to disk while they
    wait for the budget), another gets 503: disk and memory for bodies stay bounded whatever the connections."""

    def __init__(self, app: Any):
        self.app = app
        self.bodies = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = scope.get("headers") or ()
        declared = next((value for name, value in headers if name == b"content-length"), None)
        if declared is None and not any(name == b"transfer-encoding" for name, _ in headers):
            return await self.app(scope, receive, send)  # HTTP/1.1: neither header, no body
        cap = limit("MAX_QUERY_BYTES") + BODY_SLACK

        async def refuse(status: int, message: str, extra: dict | None = None) -> None:
            await JSONResponse({"error": message}, status_code=status, headers=extra)(scope, receive, send)

        if declared is not None and declared.isdigit() and int(declared) > cap:
            return await refuse(413, f"request body is over the limit of {cap:,} bytes")
        if declared is None or not declared.isdigit() or int(declared) > SMALL_BODY:
            if self.bodies >= MAX_BODIES:
                return await refuse(503, f"the server is busy: {MAX_BODIES} uploads in progress; try again shortly",
                                    {"Retry-After": "2"})
            self.bodies += 1
            try:
                return await self._counted(scope, receive, send, cap, refuse)
            finally:
                self.bodies -= 1
        await self._counted(scope, receive, send, cap, refuse)

    async def _counted(self, scope: dict, receive: Any, send: Any, cap: int, refuse: Any) -> None:
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
                await refuse(413, f"request body is over the limit of {cap:,} bytes")

        await self.app(scope, counted, replaced)
