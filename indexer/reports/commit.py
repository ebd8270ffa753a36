"""Decide, at a metadata commit, whether the report tables change, and build them through the writer's commit."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Callable

import pyarrow as pa

from indexer.errors import UserError
from indexer.reports.ingest import REPORT_COLUMN, read_report_folder, report_texts
from indexer.reports.store import ReportConfig, ReportFiles, build_reports


def report_source(source: str | None, metadata: pa.Table | None,
                  model: str | None = None) -> tuple[pa.Table | None, ReportConfig | None]:
    """Read ``--reports``: a folder of ``<slide_id>.txt`` files (→ a metadata table with a ``report`` column),
    or the name of a metadata column that holds the reports.

    Args:
        source: the ``--reports`` value (None: not given).
        metadata: the metadata table this run merges in (to check a column name against), if any.
        model: ``--report-model``.

    Returns:
        (metadata table to merge, or None; the report configuration, or None when reports were not asked for).
    """
    if source is None:
        return None, (ReportConfig(model=model) if model is not None else None)
    if Path(source).is_dir():
        return read_report_folder(source), ReportConfig(REPORT_COLUMN, model)
    if metadata is not None and source in metadata.column_names:
        return None, ReportConfig(source, model)
    if Path(source).exists():
        raise UserError(f"--reports {source}: not a folder (give a folder of <slide_id>.txt files or a metadata column)")
    return None, ReportConfig(source, model)  # a column of the stored metadata: checked in report_hook


def report_hook(writer, config: ReportConfig | None,
                table: pa.Table | None) -> Callable[[pa.Table | None, int], str | None] | None:
    """What ``IndexWriter.update_metadata`` calls to write the report tables of the new version, or None
    when reports stay as they are (not asked for and not indexed yet, or their texts are unchanged).

    An index whose reports are indexed keeps following its report column: a later CSV that changes it
    re-indexes the changed reports (with the stored model, unless ``config`` names another).
    """
    live = writer.version.reports
    old = ReportFiles(writer.paths.root / live) if live else None
    if config is None and old is None:
        return None
    if config is None:
        config = ReportConfig(old.info["column"], None if old.info["model"] == "all-MiniLM-L6-v2" else old.info["model_path"])
    elif old is not None and config.model is None and config.column == old.info["column"] \
            and old.info["model"] != "all-MiniLM-L6-v2":
        config = replace(config, model=old.info["model_path"])
    if table is not None and config.column not in table.column_names and old is not None \
            and config.column == old.info["column"]:
        return None  # this CSV does not touch the reports
    stored = writer.metadata
    columns = set(stored.column_names if stored is not None else ()) | set(table.column_names if table is not None else ())
    if config.column not in columns:
        raise UserError(f"--reports {config.column}: no such metadata column and no such folder "
                        f"(columns: {', '.join(sorted(columns - {'slide_id'})) or 'none'})")

    def build(merged: pa.Table | None, number: int) -> str | None:
        if old is not None and _same(old, config, merged):
            return live
        from indexer.aggregation.bank import load_bank

        spec = writer.settings.bank
        try:
            bank = load_bank(spec.get("source", spec["name"]))
        except UserError as exc:
            raise UserError(f"cannot match report attributes: the index's bank is unavailable ({exc})") from None
        return build_reports(writer.paths.root, number, merged, live, config, bank)

    return build


def _same(old: ReportFiles, config: ReportConfig, merged: pa.Table | None) -> bool:
    """Whether the live report tables already hold exactly these texts with this model and column."""
    if old.info["column"] != config.column or not old.current:
        return False
    model = "all-MiniLM-L6-v2" if config.model is None else config.model
    if model not in (old.info["model"], old.info["model_path"]):
        return False
    texts = report_texts(merged, config.column)
    return old.slide_sha() == {s: hashlib.sha256(t.encode()).hexdigest() for s, t in texts.items()}


def commit_metadata(writer, table: pa.Table | None, report_table: pa.Table | None, config: ReportConfig | None):
    """Commit a metadata CSV and/or a report folder (as :func:`report_source` read them) in one version,
    with the report tables they change; returns the live version (unchanged when there was nothing to do)."""
    from indexer.store.metadata import merge_metadata

    if report_table is not None:
        table = report_table if table is None else merge_metadata(table, report_table)
    hook = report_hook(writer, config, table)
    if table is None and hook is None:
        return writer.version
    return writer.update_metadata(table, reports=hook)
