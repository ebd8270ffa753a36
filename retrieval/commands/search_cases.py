"""`slidesearch search case`: cases like a case or a slide, fused over stains; and the case table shared with
`search slide --group case`."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retrieval.cli_app import guarded, print_json
from retrieval.commands.search import DEVICE_OPTION, JSON_OPTION, K_OPTION, WHERE_OPTION, search_app

TARGET_STAIN_OPTION = typer.Option(
    None, "--target-stain", help="Only slides of this stain (e.g. H&E) as results: an IHC query finds H&E slides/cases.")
SPACE_OPTION = typer.Option(None, "--space", help="Slide space: proto, mean, or an imported slide encoder (index --slide-encoder).")


@search_app.command("case")
@guarded
def search_case(
    index: Path = typer.Argument(..., help="Index directory."),
    query: str = typer.Argument(..., help="A case_id (all its slides are the query) or an indexed slide_id."),
    k: int = K_OPTION,
    where: Optional[str] = WHERE_OPTION,
    exclude_same: Optional[str] = typer.Option(None, "--exclude-same", help="Also drop cases sharing this column's value (e.g. patient_id)."),
    target_stain: Optional[str] = TARGET_STAIN_OPTION,
    fusion: str = typer.Option("mean", "--fusion", help="Case vector: mean (all slides), concat (per-stain means) or max (best slide)."),
    space: Optional[str] = SPACE_OPTION,
    as_json: bool = JSON_OPTION,
    device: str = DEVICE_OPTION,
) -> None:
    """Case → case: cases (a case_id's slides, by stain) like a case or a slide; the query's own case is left out."""
    from retrieval.query.cases import CaseSearcher
    from retrieval.search import SlideSearcher

    searcher = CaseSearcher(SlideSearcher(index, device=device))
    result = searcher.search(query, k=k, where=where, exclude_same=exclude_same, target_stain=target_stain,
                             fusion=fusion, space=space or "proto")
    show_cases(result, as_json)


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
