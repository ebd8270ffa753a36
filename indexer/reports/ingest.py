"""Where reports come from: a folder of ``<slide_id>.txt`` files, or a metadata column (``report`` by default)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from indexer.errors import UserError
from indexer.slides.ids import check_slide_id

REPORT_COLUMN = "report"
MAX_REPORT_BYTES = 1 << 20


def read_report_folder(folder: str | Path, column: str = REPORT_COLUMN) -> pa.Table:
    """A metadata table (slide_id, ``column``) from the ``<slide_id>.txt`` files of a folder (UTF-8).

    Raises:
        UserError: no such folder, no .txt file in it, an unreadable or oversized file, a bad slide id.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"--reports {folder}: no such folder (give a folder of <slide_id>.txt files)")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt" and p.is_file())
    if not files:
        raise UserError(f"--reports {folder}: no <slide_id>.txt files in it")
    ids, texts = [], []
    for path in files:
        if path.stat().st_size > MAX_REPORT_BYTES:
            raise UserError(f"report {path}: over {MAX_REPORT_BYTES:,} bytes; is it a report?")
        try:
            text = path.read_text(encoding="utf-8-sig")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"report {path}: not readable UTF-8 text ({exc.__class__.__name__})") from None
        ids.append(check_slide_id(path.stem))
        texts.append(text.strip() or None)
    return pa.table({"slide_id": pa.array(ids, pa.string()), column: pa.array(texts, pa.string())})


def report_texts(metadata: pa.Table | None, column: str = REPORT_COLUMN) -> dict[str, str]:
    """slide_id → non-empty report text of a metadata table (empty when it has no such column)."""
    if metadata is None or column not in metadata.column_names:
        return {}
    values = metadata.column(column)
    if not pa.types.is_string(values.type) and not pa.types.is_large_string(values.type):
        raise UserError(f"metadata column {column!r} is {values.type}, not text; it cannot hold reports")
    return {s: t.strip() for s, t in zip(metadata.column("slide_id").to_pylist(), values.to_pylist())
            if t is not None and t.strip()}
