"""`slidesearch bench ...`: offline evaluation on your own labelled index (commands in bench_quality.py)."""

from __future__ import annotations

import typer

from retrieval.cli_app import app

bench_app = typer.Typer(
    help="Offline evaluation of an index that writes JSON + Markdown + PNG reports: retrieval (slide or case level).",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


def split_items(text: str) -> list[str]:
    """Non-empty, stripped items of a comma-separated option value."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_ints(text: str, option: str) -> tuple[int, ...]:
    """'1,5,10' or '1e4,1e5' → integers; a one-line error naming ``option`` otherwise."""
    from indexer.errors import QueryError

    try:
        return tuple(int(float(part)) for part in split_items(text))
    except ValueError:
        raise QueryError(f"{option} must be comma-separated numbers, got {text!r}") from None
