"""`slidesearch search text|slide|patch`: query an index from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from retrieval.cli_app import app, guarded
from retrieval.commands.show import show_cases, show_result
from retrieval.query import options

search_app = typer.Typer(help="Search an index by text, slide, patch or case.", no_args_is_help=True)
app.add_typer(search_app, name="search")

K_OPTION = options.K.cli()
WHERE_OPTION = options.WHERE.cli()
JSON_OPTION = options.JSON.cli()
THUMBS_OPTION = options.THUMBNAILS.cli()
GEOJSON_OPTION = options.GEOJSON.cli()
DEVICE_OPTION = options.DEVICE.cli()
HAS_OPTION = options.HAS.cli()
SPACE_OPTION = options.SPACE.cli()
TARGET_STAIN_OPTION = options.TARGET_STAIN.cli()
EXCLUDE_SAME_OPTION = options.EXCLUDE_SAME.cli()


@search_app.command("text")
@guarded
def search_text(
    index: Path = typer.Argument(..., help="Index directory."),
    query: str = typer.Argument(..., help="Free-text description, e.g. 'adenocarcinoma with necrosis'."),
    k: int = K_OPTION,
    where: Optional[str] = WHERE_OPTION,
    no_expand: bool = options.NO_EXPAND.cli(),
    source: Optional[str] = options.SOURCE.cli(),
    has: Optional[List[str]] = HAS_OPTION,
    as_json: bool = JSON_OPTION,
    thumbnails: Optional[Path] = THUMBS_OPTION,
    geojson: Optional[Path] = GEOJSON_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Text → slide: slides whose prototypes and patches (and reports, when indexed) match a description."""
    from retrieval.search import SlideSearcher

    result = SlideSearcher(index, device=device).search_text(query, k=k, where=where, expand=not no_expand,
                                                             source=source, has=tuple(has or ()))
    show_result(result, as_json, thumbnails, geojson)


@search_app.command("report")
@guarded
def search_report_command(
    index: Path = typer.Argument(..., help="Index directory."),
    text: str = typer.Argument(..., help="Free report text, e.g. 'Adenocarcinoma with necrosis; no mucin.' "
                                         "(@FILE reads it from a file)."),
    k: int = K_OPTION,
    where: Optional[str] = WHERE_OPTION,
    has: Optional[List[str]] = HAS_OPTION,
    as_json: bool = JSON_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Report → slide: slides whose images show the attributes a report affirms (negated ones left out)."""
    from indexer.errors import UserError
    from retrieval.query.report_to_slide import search_report
    from retrieval.search import SlideSearcher

    if text.startswith("@"):
        try:
            text = Path(text[1:]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"report file {text[1:]}: cannot be read ({exc.__class__.__name__})") from None
    result = search_report(SlideSearcher(index, device=device), text, k=k, where=where, has=tuple(has or ()))
    show_result(result, as_json, None)


@search_app.command("slide")
@guarded
def search_slide(
    index: Path = typer.Argument(..., help="Index directory."),
    slide: str = typer.Argument(..., help="An indexed slide_id, or a slide file (embedded on the fly, not added)."),
    k: int = K_OPTION,
    where: Optional[str] = WHERE_OPTION,
    exclude_same: Optional[str] = EXCLUDE_SAME_OPTION,
    mode: str = options.MODE.cli(),
    space: Optional[str] = SPACE_OPTION,
    target_stain: Optional[str] = TARGET_STAIN_OPTION,
    group: Optional[str] = options.GROUP.cli(),
    as_json: bool = JSON_OPTION,
    thumbnails: Optional[Path] = THUMBS_OPTION,
    geojson: Optional[Path] = GEOJSON_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Slide → slide: cases that look like this slide."""
    from retrieval.query.cases import slide_query
    from retrieval.search import SlideSearcher

    result = slide_query(SlideSearcher(index, device=device), slide, k=k, where=where, exclude_same=exclude_same,
                         mode=mode, space=space, target_stain=target_stain, group=group)
    if group is not None:
        return show_cases(result, as_json)
    show_result(result, as_json, thumbnails, geojson)


@search_app.command("patch")
@guarded
def search_patch(
    index: Path = typer.Argument(..., help="Index directory."),
    image: str = typer.Argument(..., help="An image file, or a region of an indexed slide: SLIDE_ID@x,y,w,h (level-0 px)."),
    k: int = K_OPTION,
    where: Optional[str] = WHERE_OPTION,
    as_json: bool = JSON_OPTION,
    thumbnails: Optional[Path] = THUMBS_OPTION,
    geojson: Optional[Path] = GEOJSON_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Patch → slide: where else this morphology occurs."""
    from retrieval.search import SlideSearcher

    result = SlideSearcher(index, device=device).search_patch(image, k=k, where=where)
    show_result(result, as_json, thumbnails, geojson)
