"""`slidesearch bench retrieval`: leave-one-patient-out retrieval quality, slide or case level."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import List, Optional

import typer

from retrieval.cli_app import guarded, print_json
from retrieval.commands.bench import parse_ints, bench_app


@bench_app.command("retrieval")
@guarded
def retrieval(
    index: Path = typer.Argument(..., help="Index directory."),
    label: str = typer.Option(..., "--label", help="Slide column holding the class, e.g. label or diagnosis."),
    k: str = typer.Option("1,5,10", "--k", "-k", help="Comma-separated cut-offs for mMV@k, mAP@k and Acc@k."),
    exclude_same: Optional[str] = typer.Option(
        "patient_id", "--exclude-same", help="Leave out slides sharing this column with the query; 'none' for leave-one-slide-out."),
    mode: Optional[List[str]] = typer.Option(
        None, "--mode", help="proto, mean or patch-vote (repeatable; default: all three)."),
    max_query_patches: int = typer.Option(64, help="patch-vote: at most this many evenly spaced patches per query slide."),
    patch_neighbours: int = typer.Option(32, help="patch-vote: nearest patches fetched per query patch."),
    out: Path = typer.Option(Path("bench-retrieval"), "--out", help="Folder for bench_retrieval.json, .md and .png."),
    convention: str = typer.Option(
        "slidesearch", "--convention", help="Metric convention: slidesearch (default) or sish (SISH's eval.py)."),
    level: str = typer.Option("slide", "--level", help="slide (slides as queries) or case (cases; plus cross-stain Recall@k)."),
    fusion: Optional[List[str]] = typer.Option(None, "--fusion", help="--level case: concat, mean or max (repeatable; default all)."),
    space: Optional[List[str]] = typer.Option(None, "--space", help="--level case: slide spaces (repeatable; default all)."),
    as_json: bool = typer.Option(False, "--json", help="Print the full result as JSON instead of the table."),
) -> None:
    """Leave-one-patient-out retrieval over the whole index: mMV@k, mAP@k, Acc@k per mode, with the chance rate."""
    from rich.progress import Progress

    from retrieval.evaluation.bench_retrieval import MODES, markdown_report, run_retrieval_benchmark, write_retrieval_report

    ks = parse_ints(k, "--k")
    modes = tuple(mode or MODES)
    exclude = None if exclude_same in (None, "", "none") else exclude_same
    if level not in ("slide", "case"):
        from indexer.errors import QueryError

        raise QueryError(f"--level {level!r}: use slide or case")
    if level == "case":
        return _case_level(index, label, ks, exclude, fusion, space, convention, out, as_json)
    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task("queries", total=None)
        result = run_retrieval_benchmark(index, label, ks, exclude, modes, max_query_patches=max_query_patches,
                                         patch_neighbours=patch_neighbours, convention=convention,
                                         on_query=lambda s: progress.update(task, advance=1, description=f"queried {s}"))
    _report(result, out, as_json, write_retrieval_report, markdown_report)


def _report(result, out, as_json: bool, write, markdown) -> None:
    """Write the report files, then print the result as JSON or Markdown."""
    command = _command_line()
    paths = write(result, out, command=command)
    if as_json:
        print_json(result | {"command": command, "files": {ext: str(p) for ext, p in paths.items()}})
        return
    typer.echo(markdown(result))
    typer.echo("wrote " + ", ".join(str(p) for p in paths.values()))


def _case_level(index, label, ks, exclude, fusions, spaces, convention, out, as_json) -> None:
    """`bench retrieval --level case`: retrieval/evaluation/bench_cases.py."""
    from rich.progress import Progress

    from retrieval.evaluation.bench_cases import markdown_case_report, run_case_benchmark, write_case_report
    from retrieval.query.cases import FUSIONS

    with Progress(transient=True, disable=as_json) as progress:
        task = progress.add_task("case queries", total=None)
        result = run_case_benchmark(index, label, ks, exclude, tuple(fusions or FUSIONS), spaces or None, convention,
                                    on_query=lambda s: progress.update(task, advance=1, description=f"ran {s}"))
    _report(result, out, as_json, write_case_report, markdown_case_report)


def _command_line() -> str:
    """The command as typed (for the reports)."""
    return "slidesearch " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else ""

