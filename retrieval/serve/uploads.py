"""Uploaded query images: the header read off the event loop, then decoded and used under the server's budget.

Starlette spools an upload's bytes to a temporary file (in memory up to 1 MiB); nothing is decoded while a
request waits. Its header gives the image's size (PIL opens lazily); a JPEG is decoded at the DCT scale the model
needs (``Image.draft``), any other image reduced to that scale as soon as it is decoded (``decode_query_image``);
the bytes its decode holds at most (``decode_bytes``) are what the request asks of the memory budget.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from retrieval.serve.budget import Budget

T = TypeVar("T")


async def with_upload(budget: Budget, upload: Any, work: Callable[[Any], T], min_side: int | None = None,
                      cost: int = 0) -> T:
    """``work(pixels)`` on an upload (a Starlette ``UploadFile``), decoded under ``budget``: the header is read in a
    thread, the decode and ``work`` run in one budgeted job (in the budget's upload lane) holding the decoded pixels'
    bytes (plus ``cost``)."""
    import anyio

    from retrieval.query.parse import decode_bytes, decode_query_image, open_query_image

    name = (upload.filename or "uploaded image")[:100]
    opened = await anyio.to_thread.run_sync(open_query_image, upload.file, name, min_side)

    def job() -> T:
        pixels = decode_query_image(opened, min_side)
        try:
            return work(pixels)
        finally:
            pixels.close()

    try:
        return await budget.run(job, cost=decode_bytes(opened) + cost, lane="upload")
    finally:
        opened.close()
