"""User metadata versions (``metadata/vNNNNNN.parquet``): slide_id → columns, merged CSV by CSV."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from indexer.errors import UserError
from indexer.store import crash
from indexer.store.atomic import atomic_path
from indexer.store.layout import IndexPaths


def read_metadata(paths: IndexPaths, relative: str | None) -> pa.Table | None:
    """The stored metadata table of a version (None when it has none)."""
    return None if relative is None else pq.read_table(paths.root / relative)


def merge_metadata(old: pa.Table | None, new: pa.Table) -> pa.Table:
    """``old`` updated by ``new`` (both keyed by a unique ``slide_id``): new columns are added, the values of
    the slides ``new`` names are replaced in its columns, and every other value is kept.

    A column ``new`` gives without a declared type takes the stored column's type.

    >>> old = pa.table({"slide_id": ["a", "b"], "label": ["x", "y"], "site": ["s1", "s2"]})
    >>> new = pa.table({"slide_id": ["b", "c"], "label": ["z", "w"]})
    >>> merge_metadata(old, new).sort_by("slide_id").to_pydict()
    {'slide_id': ['a', 'b', 'c'], 'label': ['x', 'z', 'w'], 'site': ['s1', 's2', None]}
    """
    if old is None:
        return new
    old_ids, new_ids = old.column("slide_id").to_pylist(), new.column("slide_id").to_pylist()
    position = {s: i for i, s in enumerate(old_ids)}
    added = [s for s in new_ids if s not in position]
    ids = old_ids + added
    new_pos = {s: i for i, s in enumerate(new_ids)}
    columns = {"slide_id": pa.array(ids, pa.string())}
    for name in dict.fromkeys(old.column_names[1:] + new.column_names[1:]):
        if name == "slide_id":
            continue
        kept = old.column(name) if name in old.column_names else None
        given = new.column(name) if name in new.column_names else None
        target = _target_type(name, kept, given)
        kept_values = _as(kept, target).to_pylist() + [None] * len(added) if kept is not None else [None] * len(ids)
        if given is not None:
            given_values = _as(given, target).to_pylist()
            kept_values = [given_values[new_pos[s]] if s in new_pos else v for s, v in zip(ids, kept_values)]
        columns[name] = pa.array(kept_values, target)
    return pa.table(columns)


def _target_type(name: str, kept, given) -> pa.DataType:
    if given is None:
        return kept.type
    if kept is None or given.type == kept.type or given.type != pa.string():
        return given.type
    return kept.type


def _as(column, target: pa.DataType):
    if column.type == target:
        return column
    try:
        return pc.cast(column, target)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise UserError(f"metadata column values do not fit the stored type {target}; "
                        "declare the column's type in the CSV header (for example age:int)") from None


def write_metadata(paths: IndexPaths, number: int, table: pa.Table) -> str:
    """Write the merged metadata for version ``number``; returns its path relative to the index."""
    path = paths.metadata / f"v{number:06d}.parquet"
    crash.point("metadata.write")
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return str(path.relative_to(paths.root))
