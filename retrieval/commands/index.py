"""`slidesearch index`, `info`, `remove`, `metadata`, `compact` and `migrate`: build, describe and edit an index."""

from __future__ import annotations

import re
from pathlib import Path
from typing import List, Optional

import typer

from indexer.errors import UserError
from retrieval.cli_app import DICOMWEB_TOKEN_OPTION, app, guarded, print_json

REPORTS_HELP = ("Index pathology reports for report search: a folder of <slide_id>.txt files, or the metadata "
                "column holding them (e.g. report). Later metadata that changes them re-indexes the changed ones.")
REPORT_MODEL_HELP = "A sentence-transformers folder for report sentences (default: all-MiniLM-L6-v2, offline)."
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)


def parse_bytes(text: str | None) -> int | None:
    """'512MB', '4G', '1.5GiB' or a plain number of bytes → bytes.

    >>> parse_bytes("4G"), parse_bytes("512mb"), parse_bytes(None)
    (4294967296, 536870912, None)
    """
    if text is None:
        return None
    match = _SIZE.match(text)
    if not match:
        raise UserError(f"cannot read {text!r} as a memory size (examples: 512MB, 4G)")
    scale = 1024 ** " kmgt".index(match.group(2).lower() or " ")
    return int(float(match.group(1)) * scale)


@app.command("index")
@guarded
def index_command(
    slides: List[str] = typer.Argument(..., metavar="SLIDES...", help="Slide files or directories (searched "
                                       "recursively), or DICOMweb URLs: dicomweb+http(s)://HOST:PORT/PATH, optionally "
                                       "…/studies/UID or …/studies/UID/series/UID (each WSI series is one slide)."),
    out: Path = typer.Option(..., "--out", "-o", help="Index directory (created, or resumed/appended)."),
    model: Optional[str] = typer.Option(
        None, "--model", "-m", help="Encoder name, required (see `slidesearch models`; tiny has random weights)."),
    checkpoint: Optional[str] = typer.Option(None, help="Local weights for the encoder."),
    mag: float = typer.Option(20.0, "--mag", help="Target magnification of patches."),
    patch: int = typer.Option(224, "--patch", help="Patch side in pixels at the target magnification."),
    min_tissue: float = typer.Option(0.5, help="Minimum tissue fraction of a kept patch."),
    bank: str = typer.Option("general", help="Knowledge bank name or YAML file of prototypes."),
    metadata: Optional[Path] = typer.Option(None, help="CSV of slide metadata (slide_id or filename column)."),
    reports: Optional[str] = typer.Option(None, "--reports", help=REPORTS_HELP),
    report_model: Optional[str] = typer.Option(None, "--report-model", help=REPORT_MODEL_HELP),
    max_patches: Optional[int] = typer.Option(None, help="Sample at most this many patches per slide."),
    mpp: Optional[float] = typer.Option(None, help="Microns per pixel for slides whose files lack it."),
    device: str = typer.Option("auto", help="Encoder device: auto (a GPU when usable; one present but unusable is "
                                            "an error), cpu or cuda. FAISS: SLIDESEARCH_FAISS_DEVICE=auto|cpu|cuda."),
    batch_size: int = typer.Option(64, help="Patches per encoder batch."),
    workers: Optional[int] = typer.Option(
        None, min=0, help="Reader processes that prepare slides and read patches ahead of the encoder, for the whole "
                          "run (default: one per core, one fewer with a GPU; 0: read in this process)."),
    tau: Optional[float] = typer.Option(None, help="Softmax temperature of the prototype attention."),
    alpha: Optional[float] = typer.Option(None, help="Prototype refinement weight (1 = text prototypes only)."),
    max_index_memory: Optional[str] = typer.Option(None, help="Memory budget per FAISS index, e.g. 4GB."),
    features: Optional[Path] = typer.Option(None, help="Import TRIDENT/CLAM .h5 features from this folder instead of encoding."),
    commit_every: Optional[int] = typer.Option(None, help="Commit a version every N slides (searchable while it runs)."),
    slide_features: Optional[Path] = typer.Option(
        None, help="Import TRIDENT slide-encoder .h5 files (<slide_id>.h5, dataset 'features') from this folder."),
    slide_encoder: Optional[str] = typer.Option(
        None, help="Name of the slide space --slide-features fills (e.g. titan); search it with `search slide --space`."),
    commit_minutes: Optional[float] = typer.Option(None, help="Also commit a version when slides have waited this many minutes."),
    engine: str = typer.Option("local", help="local (this process) or ray (encoder actors on a Ray cluster; docs/ray.md)."),
    address: Optional[str] = typer.Option(None, help="Ray engine: the cluster, auto or HOST:PORT (default: the running one, else a new local one)."),
    actors: Optional[int] = typer.Option(None, min=1, help="Ray engine: encoder actors (default: one per GPU, else as many as the CPUs hold)."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer of the index instead of refusing."),
    dicomweb_token_file: Optional[Path] = DICOMWEB_TOKEN_OPTION,
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars."),
) -> None:
    """Index slides: tile, embed, aggregate, and write Parquet + FAISS (resumable; exit 3 if some slides failed)."""
    import dataclasses

    from indexer.slides.dicomweb import use_token_file

    from indexer.aggregation.aggregate import AggregationConfig
    from indexer.ingestion.config import IndexConfig
    from indexer.ingestion.run import run_index
    from indexer.tiles.tiling import TilingConfig

    use_token_file(dicomweb_token_file)
    if features is not None and not features.is_dir():
        raise UserError(f"--features {features}: no such directory")
    if (slide_features is None) != (slide_encoder is None):
        raise UserError("--slide-features and --slide-encoder go together (a folder of .h5 files and its space name)")
    if slide_features is not None:
        from indexer.aggregation.slide_features import check_space_name

        if not slide_features.is_dir():
            raise UserError(f"--slide-features {slide_features}: no such directory")
        check_space_name(slide_encoder)
    aggregation = AggregationConfig()
    aggregation = dataclasses.replace(
        aggregation,
        **({"tau": tau} if tau is not None else {}),
        **({"alpha": alpha} if alpha is not None else {}),
    )
    config = IndexConfig(
        model=model, checkpoint=checkpoint, device=device, batch_size=batch_size, num_workers=workers,
        tiling=TilingConfig(magnification=mag, patch_px=patch, min_tissue=min_tissue), max_patches=max_patches,
        mpp=mpp, bank=bank, aggregation=aggregation, max_index_memory=parse_bytes(max_index_memory),
        features_dir=str(features) if features else None, wait=wait, commit_every=commit_every,
        slide_features_dir=str(slide_features) if slide_features else None, slide_encoder=slide_encoder,
        commit_minutes=commit_minutes, engine=engine, address=address, actors=actors,
    )
    report = run_index(slides, out, config, metadata_csv=metadata, show_progress=not (quiet or as_json),
                       reports=reports, report_model=report_model)
    summary = {
        "out": str(report.out), "version": report.version, "indexed": report.indexed, "resumed": report.resumed,
        "skipped": report.skipped, "failed": report.failed, "notes": report.notes,
        "patches_encoded": report.patches_encoded, "counts": report.counts,
        "timings_s": {k: round(v, 3) for k, v in report.timings.items()}, "devices": report.devices,
    }
    if as_json:
        print_json(summary)
    else:
        _print_summary(summary)
    raise typer.Exit(report.exit_code)


def _print_summary(summary: dict) -> None:
    from rich.console import Console

    console = Console()
    console.print(
        f"[bold]{summary['out']}[/] (version {summary['version']}): {len(summary['indexed'])} indexed, "
        f"{len(summary['resumed'])} resumed, {len(summary['skipped'])} already indexed, "
        f"{len(summary['failed'])} failed; {summary['patches_encoded']:,} patches encoded; "
        f"{summary['counts'].get('slides_ok', 0)} slides / {summary['counts'].get('patches', 0):,} patches in the index"
    )
    timing = ", ".join(f"{k} {v:.1f}s" for k, v in summary["timings_s"].items())
    console.print(f"time by stage: {timing}")
    console.print(device_line(summary["devices"]), highlight=False)
    for note in summary["notes"]:
        console.print(note, highlight=False, markup=False)
    for slide_id, reason in summary["failed"].items():
        console.print(f"[red]failed[/] {slide_id}: {reason}", highlight=False)


def device_line(devices: dict[str, str]) -> str:
    """``devices: encoder …; FAISS …`` (where a run's encoder and FAISS builds ran)."""
    parts = [f"encoder {devices['encoder']}"] if devices.get("encoder") else []
    parts += [f"FAISS {devices['faiss']}"] if devices.get("faiss") else []
    return "devices: " + ("; ".join(parts) or "none recorded")


@app.command("info")
@guarded
def info_command(
    index: Path = typer.Argument(..., help="Index directory."),
    as_json: bool = typer.Option(False, "--json", help="Print as JSON."),
) -> None:
    """Describe an index: version, counts, encoder, bank, segments, FAISS index types, sizes and recall@10 on
    held-out queries (with and without the exact re-rank), slide-encoder spaces, reports, failed slides."""
    from retrieval.query.catalog import index_info

    info = index_info(index)
    if as_json:
        print_json(info)
        return
    from rich.console import Console
    from rich.table import Table

    console = Console()
    enc, bank, counts = info["encoder"], info["bank"], info["counts"]
    segments = f"{info['segments']} segment" + ("" if info["segments"] == 1 else "s")
    console.print(f"[bold]{index}[/] (schema {info['schema_version']}, version {info['version']}, {segments}, "
                  f"updated {info['updated']})")
    console.print(f"encoder {enc['name']} (dim {enc['dim']}, weights {enc['weights_sha256'][:12]}); "
                  f"bank {bank['name']} (K={bank['K']}); tiling {info['tiling']}")
    console.print(f"{counts['slides_ok']} slides indexed, {counts['slides_failed']} failed, {counts['patches']:,} patches"
                  + (f", {counts['tombstoned']} removed (space freed by `slidesearch compact`)" if counts.get("tombstoned") else ""))
    table = Table("index", "type", "vectors", "dim", "recall@10", "re-ranked", "size")
    for name, entry in info["indexes"].items():
        reranked = entry.get("recall_at_10_reranked")
        table.add_row(name, entry["factory"], f"{entry['count']:,}", str(entry["dim"]),
                      f"{entry['recall_at_10']:.3f}", "—" if reranked is None else f"{reranked:.3f}",
                      f"{entry['nbytes'] / 1e6:.1f} MB")
    console.print(table)
    if info["devices"]:
        console.print(device_line(info["devices"]) + f" (the {info['operation']} run that made version "
                      f"{info['version']})", highlight=False)
    queries = sorted({e.get("recall_queries", "self") for e in info["indexes"].values()})
    console.print(f"recall@10 against exact search, on {' and '.join(queries)} queries (the lowest segment's); "
                  "re-ranked: after the exact re-rank of compressed hits")
    if info["spaces"]:
        console.print(f"slide-encoder spaces (search slide|case --space): {', '.join(info['spaces'])}", highlight=False)
    if info["reports"]:
        r = info["reports"]
        console.print(f"reports from {r['column']!r}: {r['slides']:,} slides, {r['sentences']:,} sentences, "
                      f"{r['attributes']:,} attributes, embedded by {r['model']}", highlight=False)
    for failed in info["failed"]:
        console.print(f"[red]failed[/] {failed['slide_id']}: {failed['error']}", highlight=False)


@app.command("remove")
@guarded
def remove_command(
    index: Path = typer.Argument(..., help="Index directory."),
    slide_ids: List[str] = typer.Argument(..., help="slide_id values to remove."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of refusing."),
) -> None:
    """Remove slides (tombstones: they vanish from every query at once; `compact` frees their space)."""
    from indexer.store.writer import IndexWriter

    with IndexWriter(index, wait=wait) as writer:
        version = writer.remove(slide_ids)
    typer.echo(f"removed {len(set(slide_ids))} slide(s); {version.counts['slides_ok']} slides remain in {index} "
               f"(version {version.number})")


@app.command("metadata")
@guarded
def metadata_command(
    index: Path = typer.Argument(..., help="Index directory."),
    csv: Optional[Path] = typer.Argument(None, help="CSV with slide_id (or filename/path) and columns; `name:int` declares a type."),
    reports: Optional[str] = typer.Option(None, "--reports", help=REPORTS_HELP),
    report_model: Optional[str] = typer.Option(None, "--report-model", help=REPORT_MODEL_HELP),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of refusing."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Merge metadata into an index without encoding: columns are added, values updated, other slides keep theirs."""
    from indexer.ingestion.metadata import read_metadata_csv, unmatched_summary
    from indexer.reports.commit import commit_metadata, report_source
    from indexer.store.writer import IndexWriter

    if csv is None and reports is None:
        raise UserError("give a metadata CSV, or --reports (a folder of <slide_id>.txt files or a metadata column)")
    table = read_metadata_csv(csv) if csv is not None else None
    report_table, report_config = report_source(reports, table, report_model)
    with IndexWriter(index, wait=wait) as writer:
        version = commit_metadata(writer, table, report_table, report_config)
        shown = table if table is not None else report_table
        line = unmatched_summary(shown, writer.live_slides) if shown is not None else "metadata: unchanged"
        if version.reports:
            line += f"; reports indexed ({version.reports})"
    table = shown if shown is not None else None
    if as_json:
        print_json({"version": version.number, "columns": table.column_names[1:] if table is not None else [],
                    "rows": table.num_rows if table is not None else 0, "summary": line, "reports": version.reports})
    else:
        typer.echo(f"{line} (version {version.number})")


@app.command("compact")
@guarded
def compact_command(
    index: Path = typer.Argument(..., help="Index directory."),
    wait: bool = typer.Option(False, "--wait", help="Wait for another writer instead of refusing."),
    retrain: bool = typer.Option(False, "--retrain", help="Also retrain the IVF-PQ quantizers from all vectors."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
) -> None:
    """Merge all segments into one, dropping removed slides; then delete files no version in use names."""
    from indexer.store.compact import compact

    summary = compact(index, wait=wait, retrain=retrain)
    if as_json:
        print_json(summary)
    else:
        typer.echo(f"{index}: {summary['segments_before']} segments -> {summary['segments_after']} (version "
                   f"{summary['version']}); removed {summary['removed']['segments']} old segments and "
                   f"{summary['removed']['versions']} old versions")


@app.command("migrate")
@guarded
def migrate_command(
    index: Path = typer.Argument(..., help="A version 1 index directory."),
) -> None:
    """Convert a version 1 index to version 2 in place, reusing its stored features (encodes nothing)."""
    from indexer.store.migrate import migrate

    version = migrate(index)
    typer.echo(f"{index}: migrated to schema version 2 (version {version.number}, "
               f"{version.counts['slides_ok']} slides, {version.counts['patches']:,} patches)")
