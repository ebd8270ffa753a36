"""User metadata (CSV) for slides: read as text unless a column declares its type, keyed by exact slide id.

Quoted cells may span lines (reports do), at any file size. A header cell ``name:type`` declares a column's type (``int``, ``float``, ``bool``, ``date``, ``text``); every
other column is text, so ``001`` stays ``001``. The key is ``slide_id`` (matched exactly), else ``filename``,
``file`` or ``path`` (matched on the slide id of the file name: ``a/A.ome.tiff`` → ``A``).
"""

from __future__ import annotations

import csv as pycsv
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from indexer.errors import UserError
from indexer.slides.ids import check_slide_id, slide_id_from_name

# Columns slidesearch computes itself; a metadata CSV may not redefine them.
RESERVED_COLUMNS = frozenset({
    "slide_row", "sha256", "size_bytes", "mtime_ns", "vendor", "width", "height", "mpp_source",
    "magnification", "n_patches", "patch_row_start", "patch_size", "status", "error", "entropy", "max_mass",
    "fingerprint",
})
KEY_COLUMNS = ("slide_id", "filename", "file", "path")
BLOCK = 1 << 24  # bytes per parse block: a row (one report, quoted line breaks and all) must fit in one
TYPES = {"text": pa.string(), "str": pa.string(), "int": pa.int64(), "float": pa.float64(), "bool": pa.bool_(),
         "date": pa.date32()}


def read_metadata_csv(path: str | Path) -> pa.Table:
    """Read a metadata CSV into a table whose first column is ``slide_id``.

    Duplicate ids keep their last row (the summary line says how many there were).

    Raises:
        UserError: missing or unreadable file, no key column, reserved or badly typed columns, bad ids.
    """
    from pyarrow import csv

    path = Path(path)
    if not path.is_file():
        raise UserError(f"metadata file {path}: no such file")
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            header = next(pycsv.reader(fh), None)
    except (OSError, UnicodeDecodeError, pycsv.Error) as exc:
        raise UserError(f"metadata file {path}: not a readable CSV ({exc})") from None
    if not header:
        raise UserError(f"metadata file {path}: empty (it needs a header row)")
    names, types = _declared(header, path)
    _check_rows(path, len(names))
    try:
        table = csv.read_csv(path, read_options=csv.ReadOptions(column_names=names, skip_rows=1, block_size=BLOCK),
                             parse_options=csv.ParseOptions(newlines_in_values=True),
                             convert_options=csv.ConvertOptions(column_types={n: pa.string() for n in names},
                                                                strings_can_be_null=True))
    except (pa.ArrowInvalid, OSError) as exc:
        raise UserError(f"metadata file {path}: not a readable CSV ({str(exc).splitlines()[0]})") from None
    key = next((c for c in KEY_COLUMNS if c in names), None)
    if key is None:
        raise UserError(f"metadata file {path}: needs one of the columns {', '.join(KEY_COLUMNS)} to match slides")
    clash = sorted(RESERVED_COLUMNS & set(names))
    if clash:
        raise UserError(f"metadata file {path}: columns {', '.join(clash)} are computed by slidesearch; rename them")
    for name, target in types.items():
        try:
            table = table.set_column(names.index(name), name, pc.cast(table.column(name), target))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise UserError(f"metadata file {path}: column {name!r} is declared {target} but "
                            f"{str(exc).splitlines()[0]}") from None
    raw = table.column(key).to_pylist()
    if any(v is None for v in raw):
        raise UserError(f"metadata file {path}: column {key!r} has empty cells")
    ids = [check_slide_id(v if key == "slide_id" else slide_id_from_name(v)) for v in raw]
    last = {s: i for i, s in enumerate(ids)}
    keep = sorted(last.values())
    table = table.take(pa.array(keep, pa.int64()))
    if key == "slide_id":
        table = table.drop_columns(["slide_id"])
    out = table.add_column(0, "slide_id", pa.array([ids[i] for i in keep], pa.string()))
    return out.replace_schema_metadata({"duplicates": str(len(ids) - len(keep)), "source": str(path)})


def _check_rows(path: Path, width: int) -> None:
    """Refuse, in one line, a CSV whose quotes do not close or whose rows have more cells than its header
    (Python's C csv reader in strict mode: ~100 MB/s, quoted line breaks allowed)."""
    pycsv.field_size_limit(max(pycsv.field_size_limit(), 1 << 30))  # a report cell may exceed the 128 KB default
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = pycsv.reader(fh, strict=True)
            next(reader, None)
            for row in reader:
                if len(row) > width:
                    raise UserError(f"metadata file {path}: not a readable CSV (line {reader.line_num} has "
                                    f"{len(row)} cells, the header {width})")
    except (pycsv.Error, UnicodeDecodeError) as exc:
        line = getattr(locals().get("reader"), "line_num", "?")
        raise UserError(f"metadata file {path}: not a readable CSV (line {line}: {exc})") from None


def _declared(header: list[str], path: Path) -> tuple[list[str], dict[str, pa.DataType]]:
    names, types = [], {}
    for cell in header:
        name, sep, kind = cell.strip().rpartition(":") if ":" in cell else (cell.strip(), "", "")
        if sep and kind.strip().lower() not in TYPES:
            raise UserError(f"metadata file {path}: column {cell!r} declares unknown type {kind!r} "
                            f"(known: {', '.join(TYPES)})")
        if not name:
            raise UserError(f"metadata file {path}: a header cell is empty")
        names.append(name)
        if sep and TYPES[kind.strip().lower()] != pa.string():
            types[name] = TYPES[kind.strip().lower()]
    if len(set(names)) != len(names):
        raise UserError(f"metadata file {path}: repeated column names in the header")
    return names, types


def unmatched_summary(table: pa.Table, live: dict[str, Any]) -> str:
    """One line: rows matched, rows that match no indexed slide, duplicate ids, indexed slides without a row."""
    ids = set(table.column("slide_id").to_pylist())
    unmatched = sorted(ids - set(live))
    without = len(set(live) - ids)
    dupes = int((table.schema.metadata or {}).get(b"duplicates", b"0"))
    line = f"metadata: {len(ids) - len(unmatched)} rows matched indexed slides"
    if unmatched:
        line += f"; {len(unmatched)} match no indexed slide (e.g. {', '.join(repr(u) for u in unmatched[:3])})"
    if dupes:
        line += f"; {dupes} duplicate ids (the last row of each kept)"
    if without:
        line += f"; {without} indexed slides have no row"
    return line


def mpp_overrides(table: pa.Table | None) -> dict[str, float]:
    """slide_id → the positive ``mpp`` the metadata gives it."""
    if table is None or "mpp" not in table.column_names:
        return {}
    out = {}
    for slide_id, value in zip(table.column("slide_id").to_pylist(), table.column("mpp").to_pylist()):
        try:
            mpp = float(value)
        except (TypeError, ValueError):
            continue
        if mpp > 0:
            out[slide_id] = mpp
    return out
