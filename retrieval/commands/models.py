"""`slidesearch models`: the registered encoders, their embedding size, and whether their weights are here."""

from __future__ import annotations

from dataclasses import asdict

import typer

from retrieval.cli_app import app, guarded, print_json


@app.command()
@guarded
def models(
    json_out: bool = typer.Option(False, "--json", help="Print the list as JSON (name, dim, available, ...)."),
) -> None:
    """List encoders: embedding size, whether their weights can be used here, and how to obtain them.

    Use a name with `slidesearch index --model NAME [--checkpoint PATH]`.
    """
    from indexer.models.encoders import list_encoders

    infos = list_encoders()
    if json_out:
        print_json([asdict(info) for info in infos])
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console()
    for info in infos:
        dim = f"dim {info.dim}" if info.dim else "dim depends on <arch>"
        here = "[green]available[/green]" if info.available else "[yellow]not available here[/yellow]"
        status = f" ({escape(info.status)})" if info.status else ""
        console.print(f"[bold]{escape(info.name)}[/bold]  {dim}  {here}{status}")
        console.print(f"    {escape(info.description)}", highlight=False)
        console.print(f"    obtain: {escape(info.how_to_obtain)}", highlight=False)
