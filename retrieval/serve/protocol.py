"""uvicorn's HTTP protocol with deadlines on partial requests and a bound on the request head.

uvicorn closes idle keep-alive connections (``timeout_keep_alive``) but has no timeout for a connection that
sends nothing, half a request line, headers a byte at a time (slowloris) or a body that never ends, and
llhttp buffers a head of any size. This subclass of its httptools protocol adds, per connection:

- a head deadline: the request line and headers must arrive within ``header_timeout`` s of the connection
  (or of the request's first byte on a kept-alive connection), else 408 and the connection is closed;
- a body deadline: a declared body must arrive within ``body_timeout`` s of the head, else it is closed;
- a head bound: more than ``max_head_bytes`` before the headers end gets 431 and the connection closed;

and answers malformed requests with JSON, as every other error.
"""

from __future__ import annotations

import asyncio
import http
from typing import Any

import orjson
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from retrieval.serve import BODY_TIMEOUT_S, HEADER_TIMEOUT_S

MAX_HEAD_BYTES = 64 << 10
KEEP_ALIVE_S = 5
LINGER_S = 1.0


class GuardedHttpToolsProtocol(HttpToolsProtocol):
    """``HttpToolsProtocol`` with head and body deadlines and a head size bound (module docstring)."""

    header_timeout = HEADER_TIMEOUT_S
    body_timeout = BODY_TIMEOUT_S
    max_head_bytes = MAX_HEAD_BYTES

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._in_head = True
        self._head_bytes = self._head_parsed = 0  # raw bytes read while the head is incomplete; its parsed size
        self._lingering = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, head=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._lingering:  # an error was answered: what the client still sends is dropped until the close
            return
        super().data_received(data)
        if self._in_head and not (self._lingering or self.transport.is_closing()):
            self._head_bytes += len(data)
            if self._head_bytes > self.max_head_bytes:
                self._reply(431, f"the request line and headers are over the limit of {self.max_head_bytes:,} bytes")

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._in_head, self._head_bytes, self._head_parsed = True, 0, 0
        if self._deadline is None:
            self._arm(self.header_timeout, head=True)

    def on_url(self, url: bytes) -> None:
        self._head_parsed += len(url)  # a head that arrives in one read is measured here, not in data_received
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_parsed += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._in_head = False
        if self._head_parsed > self.max_head_bytes:
            return self._reply(431, f"the request line and headers are over the limit of {self.max_head_bytes:,} bytes")
        self._arm(self.body_timeout, head=False)
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if not self._lingering:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._lingering:
            return
        self._disarm()
        super().on_message_complete()

    def send_400_response(self, msg: str) -> None:
        self._reply(400, f"malformed HTTP request: {msg}")

    def _arm(self, seconds: float, head: bool) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(seconds, self._expired, head)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self, head: bool) -> None:
        self._deadline = None
        if self._lingering or self.transport.is_closing():
            return
        if head and (self.cycle is None or self.cycle.response_complete):
            self._reply(408, f"the request line and headers did not arrive within {self.header_timeout:g} s")
        else:  # a body that stopped: the app sees a disconnect
            self.transport.close()

    def _reply(self, status: int, message: str) -> None:
        """Answer ``{"error": message}`` (unless a response has started) and close the connection.

        The close lingers: the write side is shut and what the client still sends is read and dropped for up to
        ``LINGER_S``, so the answer is not lost to a reset from closing on unread data (RFC 9112, 9.6).
        """
        if self._lingering:
            return
        self._disarm()
        body = orjson.dumps({"error": message})
        if self.cycle is None or self.cycle.response_complete or not self.cycle.response_started:
            head = (f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\ncontent-type: application/json\r\n"
                    f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode()
            self.transport.write(head + body)
        if self.transport.can_write_eof():
            self._lingering = True
            self.transport.write_eof()
            self._deadline = self.loop.call_later(LINGER_S, self.transport.close)
        else:
            self.transport.close()


def guarded_protocol(header_timeout: float = HEADER_TIMEOUT_S, body_timeout: float = BODY_TIMEOUT_S,
                     max_head_bytes: int = MAX_HEAD_BYTES) -> type[GuardedHttpToolsProtocol]:
    """The protocol class with these limits (uvicorn's ``http=`` takes a class)."""
    return type("GuardedHttpToolsProtocol", (GuardedHttpToolsProtocol,),
                {"header_timeout": header_timeout, "body_timeout": body_timeout, "max_head_bytes": max_head_bytes})


def server_config(app: Any, host: str, port: int, header_timeout: float = HEADER_TIMEOUT_S,
                  body_timeout: float = BODY_TIMEOUT_S, max_connections: int = 512, **overrides: Any):
    """The ``uvicorn.Config`` ``slidesearch serve`` runs: the guarded protocol, no WebSockets, no access log (the
    audit log is the app's), no ``server`` header, ``X-Forwarded-*`` not trusted (a local client cannot forge the
    audit log's address), and at most ``max_connections`` open connections (503 past it)."""
    import uvicorn

    options = dict(host=host, port=port, http=guarded_protocol(header_timeout, body_timeout), ws="none",
                   log_level="warning", access_log=False, server_header=False, timeout_keep_alive=KEEP_ALIVE_S,
                   limit_concurrency=max_connections, proxy_headers=False)
    return uvicorn.Config(app, **{**options, **overrides})
