"""How `slidesearch search …` prints a result: JSON, or tables (with thumbnails and QuPath GeoJSON written)."""

from __future__ import annotations

from pathlib import Path

import typer

from retrieval.cli_app import print_json


def show_result(result, as_json: bool, thumbnails: Path | None, geojson: Path | None = None) -> None:
    """Print a SearchResult as JSON or as a table; write its thumbnails and GeoJSON first when asked."""
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


def show_cases(result, as_json: bool) -> None:
    """Print a case result as JSON or as a table: case, score, slides by stain, the matching slide and why."""
    if as_json:
        print_json(result.to_dict())
        return
    from rich.console import Console
    from rich.table import Table

    from retrieval.query.cases import slides_by_stain

    d = result.details
    title = f"case query: {result.query} (case {d['query_case']}; fusion {d['fusion']}, space {d['space']}" + \
        (f", target stain {d['target_stain']})" if d.get("target_stain") else ")")
    table = Table("rank", "case_id", "score", "slides by stain", "matched slide (stain, sim)", "why: prototypes (mass, term)",
                  title=title)
    for hit in result.hits:
        stains = "; ".join(f"{stain}: {', '.join(ids)}" for stain, ids in slides_by_stain(hit.slides).items())
        why = "; ".join(f"{p.name} ({p.mass:.2f}, {p.similarity:.2f})" for p in hit.matched.prototypes)
        table.add_row(str(hit.rank), hit.case_id, f"{hit.score:.3f}", stains,
                      f"{hit.matched.slide_id} ({hit.matched_stain}, {hit.matched.score:.3f})", why)
    Console().print(table)
    if not result.hits:
        typer.echo("no cases matched", err=True)
