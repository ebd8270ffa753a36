"""Uploaded query images: the header read off the event loop, then decoded and used under the server's budget.

Starlette spools an upload's bytes to a temporary file (in memory up to 1 MiB); nothing is decoded while a
request waits. Its header gives the image's size (PIL opens lazily), and a JPEG is decoded at the DCT scale
the model needs (``Image.draft``); the decoded pixels are what the request asks of the memory budget.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar

from retrieval.serve.budget import Budget

T = TypeVar("T")
BYTES_PER_PX = 8  # PIL holds RGB at 4 bytes a pixel: the decoded image and its RGB copy


def decode_cost(image) -> int:
    """Bytes of memory decoding a lazily opened image takes (at its drafted size)."""
    width, height = image.size
    return width * height * BYTES_PER_PX


async def with_upload(budget: Budget, upload: Any, work: Callable[[Any], T], min_side: int | None = None,
                      cost: int = 0) -> T:
    """``work(pixels)`` on an upload (a Starlette ``UploadFile``), decoded under ``budget``: the header is read in a
    thread, the decode and ``work`` run in one budgeted job holding the decoded pixels' bytes (plus ``cost``)."""
    import anyio

    from retrieval.queries import decode_query_image, open_query_image

    name = (upload.filename or "uploaded image")[:100]
    opened = await anyio.to_thread.run_sync(open_query_image, upload.file, name, min_side)

    def job() -> T:
        pixels = decode_query_image(opened)
        try:
            return work(pixels)
        finally:
            pixels.close()

    try:
        return await budget.run(job, cost=decode_cost(opened) + cost)
    finally:
        opened.close()
