"""User metadata (CSV) for slides: read, validate, and join to slides by slide_id or file name."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa

from indexer.errors import UserError

# Columns slidesearch computes itself; a metadata CSV may not redefine them.
RESERVED_COLUMNS = frozenset({
    "slide_row", "sha256", "size_bytes", "mtime_ns", "vendor", "width", "height", "mpp_source",
    "magnification", "n_patches", "patch_row_start", "patch_size", "status", "error", "entropy", "max_mass",
})
KEY_COLUMNS = ("slide_id", "filename", "file", "path")


def read_metadata_csv(path: str | Path) -> pa.Table:
    """Read a metadata CSV and check it has a key column and no reserved columns.

    Args:
        path: CSV with a header; one of slide_id, filename, file or path identifies the slide.

    Returns:
        The table, with a string column ``slide_key`` holding the value to match slides on.
    """
    from pyarrow import csv

    path = Path(path)
    if not path.is_file():
        raise UserError(f"metadata file {path}: no such file")
    try:
        table = csv.read_csv(path)
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"metadata file {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    key = next((c for c in KEY_COLUMNS if c in table.column_names), None)
    if key is None:
        raise UserError(f"metadata file {path}: needs one of the columns {', '.join(KEY_COLUMNS)} to match slides")
    clash = sorted(RESERVED_COLUMNS & set(table.column_names))
    if clash:
        raise UserError(f"metadata file {path}: columns {', '.join(clash)} are computed by slidesearch; rename them")
    keys = [_normalise_key(str(v)) for v in table.column(key).to_pylist()]
    if len(set(keys)) != len(keys):
        raise UserError(f"metadata file {path}: column {key!r} has duplicate values")
    return table.append_column("slide_key", pa.array(keys, pa.string()))


def _normalise_key(value: str) -> str:
    """A slide key compares on the file stem: 'a/b/S1.svs', 'S1.svs' and 'S1' all match slide S1."""
    name = Path(value).name
    for suffix in Path(name).suffixes[::-1]:
        if len(suffix) <= 6:
            name = name[: -len(suffix)]
        else:
            break
    return name or value


def metadata_by_slide(table: pa.Table | None) -> dict[str, dict[str, Any]]:
    """Map slide_id → that slide's user columns (the key column included)."""
    if table is None:
        return {}
    rows = table.to_pylist()
    return {row.pop("slide_key"): row for row in rows}


def slide_mpp_override(row: dict[str, Any] | None) -> float | None:
    """The per-slide ``mpp`` metadata value, when present and positive."""
    if not row or row.get("mpp") in (None, ""):
        return None
    try:
        value = float(row["mpp"])
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def stored_metadata(index_root: Path, table: pa.Table | None) -> dict[str, dict[str, Any]]:
    """Store newly given metadata (from :func:`read_metadata_csv`) in the index; otherwise reuse the stored one."""
    import pyarrow.parquet as pq

    from indexer.store import atomic_path

    path = Path(index_root) / "metadata.parquet"
    if table is not None:
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return metadata_by_slide(table)
    return metadata_by_slide(pq.read_table(path)) if path.is_file() else {}
