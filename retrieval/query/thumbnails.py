"""PNG thumbnails of search hits with their best-matching patches outlined."""

from __future__ import annotations

import re
from pathlib import Path

from retrieval.query.results import SearchResult

HIT_RGB = (230, 30, 30)


def write_hit_thumbnails(result: SearchResult, out_dir: str | Path, max_px: int = 768) -> list[Path]:
    """Write ``<rank>_<slide_id>.png`` for every hit; slides that can no longer be opened are skipped.

    Returns:
        The written files, in rank order.
    """
    from indexer.errors import UserError
    from indexer.slides import open_slide
    from indexer.tiles.overlay import draw_squares

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for hit in result.hits:
        try:
            with open_slide(hit.metadata["path"], mpp=hit.metadata.get("mpp")) as slide:
                thumb = slide.thumbnail(max_px).convert("RGB")
                scale = thumb.width / slide.dimensions[0]
        except UserError:
            continue
        boxes = [(p.x, p.y, p.size) for p in hit.patches]
        image = draw_squares(thumb, boxes, scale, HIT_RGB, width=3)
        path = out_dir / f"{hit.rank:02d}_{re.sub(r'[^A-Za-z0-9._-]', '_', hit.slide_id)}.png"
        image.save(path)
        written.append(path)
    return written
