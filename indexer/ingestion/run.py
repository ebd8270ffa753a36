"""Compose the stages (open → tissue → tile → embed → stage → commit), resumably, one slide at a time.

Each slide is encoded into ``staging/``; a commit aggregates the staged slides against the fixed prototypes
P into one new segment and publishes a version (DESIGN §4), so a run costs O(its slides), memory stays at
one slide plus one batch, and a killed run resumes from its staged slides.
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from indexer.ingestion.commit import PendingRun, prototype_table
from indexer.ingestion.config import IndexConfig, IndexReport, check_model_named, settings_for
from indexer.ingestion.discovery import collect_slides
from indexer.ingestion.metadata import read_metadata_csv, unmatched_summary
from indexer.progress import StageProgress
from indexer.reports.commit import commit_metadata, report_source
from indexer.slides import slide_id as slide_id_of
from indexer.slides.ids import check_slide_id
from indexer.slides.sources import list_sources
from indexer.store.writer import IndexWriter


def run_index(
    inputs: Iterable[str | Path],
    out: str | Path,
    config: IndexConfig,
    metadata_csv: str | Path | None = None,
    show_progress: bool = True,
    reports: str | None = None,
    report_model: str | None = None,
) -> IndexReport:
    """Index slides into ``out``: new and changed slides are encoded and committed as a new segment; slides
    already committed with the same file and settings are skipped; staged work of a killed run is resumed.

    Args:
        inputs: slide files or directories, or DICOMweb URLs (``indexer.slides.sources``).
        out: the index directory (created if missing).
        config: model, tiling, bank and index options.
        metadata_csv: optional CSV of user columns, merged into the stored metadata.
        show_progress: draw rich progress bars on stderr.
        reports: a folder of ``<slide_id>.txt`` reports, or the metadata column holding them (indexed for
            report search: ``indexer/reports/``).
        report_model: a sentence-transformers folder for the reports (default: all-MiniLM-L6-v2).
    """
    from indexer.aggregation.bank import load_bank
    from indexer.models.devices import encoder_label
    from indexer.engines import open_engine
    from indexer.vectors.device import faiss_label
    from indexer.store.compact import auto_merge, vacuum

    # Every check comes before the first write: a refused run leaves the index as it was.
    check_model_named(config.model)
    faiss_label()  # a FAISS device asked for (or present) but unusable is refused before any work
    slides, notes = list_sources(inputs, lambda files: [(check_slide_id(slide_id_of(p)), p)
                                                        for p in collect_slides(files)])
    new_metadata = read_metadata_csv(metadata_csv) if metadata_csv is not None else None
    report_table, report_config = report_source(reports, new_metadata, report_model)
    timings: dict[str, float] = defaultdict(float)
    report = IndexReport(out=Path(out), notes=notes)
    bank = load_bank(config.bank)
    with open_engine(config, out, report) as engine:
        t0 = time.perf_counter()
        encoder, text_prototypes = engine.load(bank)
        timings["load model"] = time.perf_counter() - t0
        report.devices = {"encoder": encoder_label(encoder), "faiss": faiss_label()}
        with IndexWriter(out, wait=config.wait, create=True) as writer:
            settings = writer.set_identity(settings_for(config, encoder, bank))
            if new_metadata is not None or report_table is not None or report_config is not None:
                commit_metadata(writer, new_metadata, report_table, report_config)
            with StageProgress(enabled=show_progress) as progress:
                run = PendingRun(writer, config, settings, report, timings, prototype_table(bank, text_prototypes),
                           text_prototypes, progress, report.devices)
                progress.start_slides(len(slides))
                engine.index(run, slides)
            run.adopt_leftovers({s for s, _ in slides})
            run.commit()
            if auto_merge(writer):
                vacuum(writer.paths, writer.version)  # merged-away segments, unless an open searcher still reads them
            report.counts, report.version = dict(writer.version.counts), writer.version.number
            if new_metadata is not None:
                report.notes.append(unmatched_summary(new_metadata, writer.live_slides))
            if report_table is not None:
                report.notes.append(unmatched_summary(report_table, writer.live_slides).replace("metadata:", "reports:", 1))
    report.timings = dict(timings)
    return report
