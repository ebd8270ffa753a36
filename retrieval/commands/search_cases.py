"""`slidesearch search case`: cases like a case or a slide, fused over stains."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from retrieval.cli_app import guarded
from retrieval.commands.search import search_app
from retrieval.commands.show import show_cases
from retrieval.query import options


@search_app.command("case")
@guarded
def search_case(
    index: Path = typer.Argument(..., help="Index directory."),
    query: str = typer.Argument(..., help="A case_id (all its slides are the query) or an indexed slide_id."),
    k: int = options.K.cli(),
    where: Optional[str] = options.WHERE.cli(),
    exclude_same: Optional[str] = options.EXCLUDE_SAME.cli(),
    target_stain: Optional[str] = options.TARGET_STAIN.cli(),
    fusion: str = options.FUSION.cli(),
    space: Optional[str] = options.SPACE.cli(),
    as_json: bool = options.JSON.cli(),
    device: str = options.DEVICE.cli(),
) -> None:
    """Case → case: cases (a case_id's slides, by stain) like a case or a slide; the query's own case is left out."""
    from retrieval.query.cases import CaseSearcher
    from retrieval.search import SlideSearcher

    searcher = CaseSearcher(SlideSearcher(index, device=device))
    result = searcher.search(query, k=k, where=where, exclude_same=exclude_same, target_stain=target_stain,
                             fusion=fusion, space=space or "proto")
    show_cases(result, as_json)
