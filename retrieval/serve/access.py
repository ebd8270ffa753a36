"""Who may ask: the Host allow-list, the bearer token, security headers and the audit log (one ASGI middleware).

- **Host.** Only ``localhost``, ``127.0.0.1``, ``[::1]`` and the names given (``--allowed-host``) are answered,
  any port; anything else (or no Host) gets 400. This stops DNS rebinding: a page whose domain re-resolves
  to 127.0.0.1 still sends its own name as Host.
- **Token.** With a token (``--token-file`` or ``SLIDESEARCH_TOKEN``), every ``/api/`` route except
  ``/api/health`` needs ``Authorization: Bearer <token>``, else 401. The page and its static files are public
  (the page asks for the token and keeps it in the tab's ``sessionStorage``).
- **Headers.** ``nosniff``, no framing, no referrer; the page gets a Content-Security-Policy allowing only
  itself; API answers are ``no-store``.
- **Audit.** With ``--audit-log FILE``, one JSON line per API request: time, client, method, route, query kind,
  the query's text or slide id (truncated; never an uploaded image's bytes), status and duration. Lines are
  written by a background thread, never on the event loop.
"""

from __future__ import annotations

import hmac
import logging
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import orjson

from indexer.errors import UserError

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
PUBLIC_API = ("/api/health",)
PAGE_CSP = ("default-src 'self'; img-src 'self' blob: data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
            "connect-src 'self' blob:; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
API_CSP = "default-src 'none'; frame-ancestors 'none'"
DOCS = ("/docs", "/redoc", "/docs/oauth2-redirect")  # FastAPI's pages load their own scripts
COMMON_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                  (b"referrer-policy", b"no-referrer"), (b"cross-origin-opener-policy", b"same-origin")]
QUERY_PARAMS = ("q", "slide_id", "region", "text", "where")  # what an audit line records of the query (truncated)
AUDIT_CHARS = 300


def host_name(value: str) -> str:
    """The host of a Host header, lower-case, without its port (``[::1]`` keeps its brackets).

    >>> host_name("LocalHost:8000"), host_name("[::1]:80"), host_name("127.0.0.1")
    ('localhost', '[::1]', '127.0.0.1')
    """
    value = value.strip().lower()
    if value.startswith("["):
        return value[: value.find("]") + 1] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


def read_token(token_file: Path | None, env: str | None) -> str | None:
    """The bearer token from a file (first line) or the environment's value; None when neither is given."""
    if token_file is not None:
        try:
            text = token_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"--token-file {token_file}: cannot be read ({exc.__class__.__name__})") from None
        token, where = (text.splitlines() or [""])[0].strip(), f"--token-file {token_file}"
    elif env is not None:
        token, where = env.strip(), "SLIDESEARCH_TOKEN"
    else:
        return None
    if len(token) < 8 or any(c.isspace() or not c.isprintable() for c in token):
        raise UserError(f"{where}: the token must be at least 8 printable characters without spaces")
    return token


def query_kind(method: str, path: str, params: dict[str, str]) -> str:
    """What a request asks, for the audit log.

    >>> query_kind("POST", "/api/search/patch", {}), query_kind("GET", "/api/slides/S1/image_files/9/0_0.jpeg", {})
    ('patch-upload', 'tile')
    """
    parts = path.strip("/").split("/")
    if parts[:2] == ["api", "search"] and len(parts) == 3:
        return parts[2] + ("-upload" if method == "POST" and parts[2] == "patch" else "")
    if parts[:2] == ["api", "slides"]:
        if "image_files" in parts:
            return "tile"
        last = parts[-1] if len(parts) > 3 else ""
        kind = last.split(".")[0] if last else "slide"
        return f"{kind}-{params['kind']}" if kind == "heatmap" and "kind" in params else kind
    return parts[1] if len(parts) > 1 else "page"


class AuditLog:
    """JSON lines appended to a file by a background thread (``logging``'s queue handler and listener)."""

    def __init__(self, path: Path):
        import logging.handlers
        import queue

        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--audit-log {path}: cannot be written ({exc.__class__.__name__})") from None
        handler.setFormatter(logging.Formatter("%(message)s"))
        records: queue.SimpleQueue = queue.SimpleQueue()
        self.logger = logging.getLogger(f"slidesearch.audit.{id(self)}")
        self.logger.propagate, self.logger.level = False, logging.INFO
        self.logger.addHandler(logging.handlers.QueueHandler(records))
        self.listener = logging.handlers.QueueListener(records, handler)
        self.listener.start()

    def write(self, entry: dict[str, Any]) -> None:
        self.logger.info(orjson.dumps(entry).decode())

    def close(self) -> None:
        self.listener.stop()


class Gate:
    """ASGI middleware: Host allow-list, bearer token, security headers and audit lines (module docstring)."""

    def __init__(self, app: Any, allowed_hosts: Iterable[str] = (), token: str | None = None,
                 audit: AuditLog | None = None):
        self.app, self.token, self.audit = app, token, audit
        self.hosts = frozenset(host_name(f"[{h}]" if h.count(":") > 1 and not h.startswith("[") else h)
                               for h in (*LOOPBACK_HOSTS, *allowed_hosts))  # an IPv6 address as a Host sends it
        self._token = token.encode() if token else None

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or ())
        status = [0]
        api = path.startswith("/api/")
        extra = list(COMMON_HEADERS)
        if path not in DOCS:
            extra.append((b"content-security-policy", (PAGE_CSP if path == "/" else API_CSP).encode()))
        if api:
            extra.append((b"cache-control", b"no-store"))

        async def sending(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                present = {name.lower() for name, _ in message.get("headers", ())}
                message["headers"] = [*message.get("headers", ()), *((n, v) for n, v in extra if n not in present)]
            await send(message)

        hosts = [value for name, value in scope.get("headers") or () if name == b"host"]
        host = hosts[0].decode("latin-1") if len(hosts) == 1 else ""
        try:
            if host_name(host) not in self.hosts:
                await self._refuse(sending, 400, f"host {host[:100]!r} is not served here (slidesearch serve "
                                                 "--allowed-host NAME adds a name)")
            elif (api and self._token and path not in PUBLIC_API and scope["method"] != "OPTIONS"  # CORS preflights
                  and not self._authorized(headers)):
                await self._refuse(sending, 401, "this server needs its token: send Authorization: Bearer <token>",
                                   [(b"www-authenticate", b'Bearer realm="slidesearch"')])
            else:
                await self.app(scope, receive, sending)
        finally:
            if self.audit is not None and api and path not in PUBLIC_API:
                self._log(scope, status[0] or 500, start)

    def _authorized(self, headers: dict[bytes, bytes]) -> bool:
        scheme, _, given = headers.get(b"authorization", b"").partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(given.strip(), self._token)

    @staticmethod
    async def _refuse(send: Any, status: int, message: str, headers: list = ()) -> None:
        body = orjson.dumps({"error": message})
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                *headers]})
        await send({"type": "http.response.body", "body": body})

    def _log(self, scope: dict, status: int, start: float) -> None:
        from urllib.parse import parse_qsl

        params = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True))
        route = scope.get("route")
        entry = {"time": datetime.now(timezone.utc).isoformat(timespec="milliseconds"),
                 "client": (scope.get("client") or ("", 0))[0], "method": scope["method"],
                 "route": getattr(route, "path", scope["path"][:AUDIT_CHARS]),
                 "kind": query_kind(scope["method"], scope["path"], params),
                 "slide_id": (scope.get("path_params") or {}).get("slide_id"),
                 "query": {k: params[k][:AUDIT_CHARS] for k in QUERY_PARAMS if k in params} or None,
                 "status": status, "duration_ms": round((time.perf_counter() - start) * 1000, 2)}
        self.audit.write(entry)


def refuse_exposed_without_token(host: str, token: str | None) -> None:
    """A bind other than loopback without a token is refused (UserError, one line)."""
    if token is None and host not in ("127.0.0.1", "localhost", "::1"):
        raise UserError(f"--host {host} would expose the index to the network without authentication: give "
                        "--token-file FILE (or set SLIDESEARCH_TOKEN), or bind 127.0.0.1")
