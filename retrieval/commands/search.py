"""`slidesearch search text|slide|patch`: query an index from the command line."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from retrieval.cli_app import app, guarded, print_json

search_app = typer.Typer(help="Search an index by text, slide, patch or case.", no_args_is_help=True)
app.add_typer(search_app, name="search")

K_OPTION = typer.Option(10, "-k", "--k", help="Number of slides to return.")
WHERE_OPTION = typer.Option(None, "--where", help="SQL filter over slide columns, e.g. \"organ = 'lung'\".")
JSON_OPTION = typer.Option(False, "--json", help="Print results as JSON.")
THUMBS_OPTION = typer.Option(None, "--thumbnails", help="Write one PNG per hit, best patches outlined, here.")
GEOJSON_OPTION = typer.Option(None, "--geojson", help="Write <slide_id>.geojson per hit here: its matched patches as "
                              "QuPath annotations (level-0 px; File > Import objects in QuPath).")
DEVICE_OPTION = typer.Option("auto", "--device", help="auto, cpu or cuda (for embedding the query).")
HAS_OPTION = typer.Option(None, "--has", help="Keep slides whose report states an attribute: X (affirmed), "
                          "'not X' (negated, never affirmed) or 'maybe X' (uncertain); repeat for AND, "
                          "e.g. --has necrosis --has 'not mucin'.")


@search_app.command("text")
@guarded
def search_text(
    index: Path = typer.Argument(..., help="Index directory."),
    query: str = typer.Argument(..., help="Free-text description, e.g. 'adenocarcinoma with necrosis'."),
    k: int = K_OPTION,
    where: Optional[str] = WHERE_OPTION,
    no_expand: bool = typer.Option(False, "--no-expand", help="Do not expand disease names with their attributes."),
    source: Optional[str] = typer.Option(None, "--source", help="image, report or both (default: both when the "
                                         "index has reports); report and image rankings are fused by RRF."),
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
    _show(result, as_json, thumbnails, geojson)


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
    _show(result, as_json, None)


@search_app.command("slide")
@guarded
def search_slide(
    index: Path = typer.Argument(..., help="Index directory."),
    slide: str = typer.Argument(..., help="An indexed slide_id, or a slide file (embedded on the fly, not added)."),
    k: int = K_OPTION,
    where: Optional[str] = WHERE_OPTION,
    exclude_same: Optional[str] = typer.Option(None, "--exclude-same", help="Drop slides sharing this column's value (e.g. patient_id)."),
    mode: str = typer.Option("proto", "--mode", help="proto (prototype slide vectors) or mean (mean-pool baseline)."),
    space: Optional[str] = typer.Option(None, "--space", help="Slide space instead of --mode: proto, mean, or an imported slide encoder."),
    target_stain: Optional[str] = typer.Option(None, "--target-stain", help="Only slides of this stain (e.g. H&E) as results."),
    group: Optional[str] = typer.Option(None, "--group", help="'case': return cases (best slide each, slides by stain); the query's case is left out."),
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
        from retrieval.commands.search_cases import show_cases

        return show_cases(result, as_json)
    _show(result, as_json, thumbnails, geojson)


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
    _show(result, as_json, thumbnails, geojson)


def _show(result, as_json: bool, thumbnails: Path | None, geojson: Path | None = None) -> None:
    written = []
    if thumbnails is not None:
        from retrieval.query.thumbnails import write_hit_thumbnails

        written = write_hit_thumbnails(result, thumbnails)
    annotations = []
    if geojson is not None:
        from retrieval.query.geojson import write_hit_geojson

        annotations = write_hit_geojson(result, geojson)
    if as_json:
        from retrieval.query.results import result_json

        print_json({**result_json(result, written), **({"geojson": [str(p) for p in annotations]} if geojson else {})})
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if result.details.get("expanded_with"):
        console.print(f"query expanded with the attributes of [bold]{result.details['expanded_with']}[/]")
    if result.details.get("not_expanded"):
        console.print(f"not expanded: {result.details['not_expanded']}", markup=False)
    if result.kind == "report":
        console.print(f"attributes searched: {', '.join(result.details['attributes'])}", markup=False)
        if result.details["left_out"]:
            console.print(f"left out: {'; '.join(result.details['left_out'])}", markup=False)
    shown = [c for c in ("patient_id", "label", "organ", "stain") if any(c in h.metadata for h in result.hits)]
    table = Table("rank", "slide_id", "score", *shown, "prototypes (mass, sim)", "best patch (x, y)", title=f"{result.kind} query: {result.query}")
    for hit in result.hits:
        protos = "; ".join(f"{p.name} ({p.mass:.2f}, {p.similarity:.2f})" for p in hit.prototypes)
        patch = f"{hit.patches[0].x}, {hit.patches[0].y} ({hit.patches[0].score:.2f})" if hit.patches else ""
        table.add_row(str(hit.rank), hit.slide_id, f"{hit.score:.3f}", *(str(hit.metadata.get(c, "")) for c in shown), protos, patch)
    console.print(table)
    for hit in result.hits:
        if hit.report and hit.report.get("sentence"):
            console.print(f"{hit.rank}. {hit.slide_id} report: ", end="", markup=False)
            console.print(highlighted(hit.report["sentence"], hit.report["highlights"]))
        elif hit.report and hit.report.get("contradicts"):
            console.print(f"{hit.rank}. {hit.slide_id} report contradicts the query (demoted)", markup=False)
    if not result.hits:
        typer.echo("no slides matched", err=True)
    for path in written:
        console.print(f"thumbnail: {path}")
    for path in annotations:
        console.print(f"QuPath GeoJSON: {path}", markup=False)


def highlighted(sentence: str, spans: list) -> "object":
    """A rich Text of ``sentence`` with the characters of ``spans`` ([start, end) pairs) in bold yellow."""
    from rich.text import Text

    text = Text(sentence)
    for start, end in spans:
        text.stylize("bold yellow", start, end)
    return text
