"""Open an index directory: manifest, DuckDB views over its Parquet tables, FAISS indexes, SQL filters."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import QueryError
from indexer.store import TABLES, IndexDir

ALLOWED_CACHE = 256  # distinct filters remembered per open index


class Catalog:
    """A read-only view of one index directory; open once, query many times.

    Attributes:
        index: the directory.
        manifest: its manifest.json content.
    """

    def __init__(self, path: str | Path):
        self.index = IndexDir(path)
        self.manifest = self.index.read_manifest()
        self._allowed: dict[tuple, np.ndarray | None] = {}  # filter → allowed rows (repeated queries reuse it)

    @cached_property
    def db(self):
        """A DuckDB connection with one view per Parquet table (slides, patches, prototypes, subvectors)."""
        import duckdb

        con = duckdb.connect()
        for name in TABLES:
            path = str(self.index.table(name)).replace("'", "''")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{path}')")
        return con

    @cached_property
    def slides(self):
        """slides.parquet as a pyarrow table."""
        return self.db.sql("SELECT * FROM slides ORDER BY slide_row").to_arrow_table()

    @cached_property
    def _filter_db(self):
        """A sandboxed DuckDB holding only the slides table: no files, no settings changes, so any
        user-written filter expression is harmless."""
        import duckdb

        con = duckdb.connect()
        con.register("slides_arrow", self.slides)
        con.execute("CREATE TABLE slides AS SELECT * FROM slides_arrow")
        con.unregister("slides_arrow")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con

    def faiss(self, name: str):
        """Load (once) the FAISS index ``name`` (slides, slides_mean, subvectors or patches)."""
        cache = self.__dict__.setdefault("_faiss", {})
        if name not in cache:
            from indexer.vector_index import load_index

            cache[name] = load_index(self.index.faiss(name))
        return cache[name]

    def allowed_slide_rows(
        self, where: str | None = None, exclude_row: int | None = None, exclude_same: str | None = None
    ) -> np.ndarray | None:
        """slide_row values of indexed slides allowed by a filter; None when nothing restricts them.

        Args:
            where: a boolean SQL expression over slide columns, e.g. ``organ = 'lung' AND stain = 'H&E'``.
            exclude_row: drop this slide (the query itself).
            exclude_same: a column name; also drop every slide sharing the query slide's value in it.

        Raises:
            QueryError: for anything but a single boolean expression over known slide columns.
        """
        key = (where, exclude_row, exclude_same)
        if key not in self._allowed:
            if len(self._allowed) >= ALLOWED_CACHE:
                self._allowed.pop(next(iter(self._allowed)))
            self._allowed[key] = self._allowed_rows(where, exclude_row, exclude_same)
        return self._allowed[key]

    def _allowed_rows(self, where: str | None, exclude_row: int | None, exclude_same: str | None) -> np.ndarray | None:
        has_where = where is not None and bool(where.strip())
        if not has_where and exclude_row is None:
            return None
        clauses, params = ["status = 'ok'"], []
        if has_where:
            validate_where(where)
            clauses.append(f"({where})")
        if exclude_row is not None:
            clauses.append("slide_row <> ?")
            params.append(int(exclude_row))
            if exclude_same:
                if exclude_same not in self.slides.column_names:
                    raise QueryError(f"--exclude-same {exclude_same!r}: no such column (columns: {', '.join(self.slides.column_names)})")
                column = '"' + exclude_same.replace('"', '""') + '"'
                clauses.append(f"{column} IS DISTINCT FROM (SELECT {column} FROM slides WHERE slide_row = ?)")
                params.append(int(exclude_row))
        return self._select_rows(" AND ".join(clauses), params, where)

    def _select_rows(self, condition: str, params: list, where: str | None) -> np.ndarray:
        import duckdb

        try:
            rows = self._filter_db.execute(f"SELECT slide_row FROM slides WHERE {condition}", params).fetchall()
        except duckdb.BinderException as exc:
            columns = ", ".join(self.slides.column_names)
            raise QueryError(f"bad --where {where!r}: {_first_line(exc)} (columns: {columns})") from None
        except duckdb.Error as exc:
            raise QueryError(f"bad --where {where!r}: {_first_line(exc)}") from None
        allowed = np.asarray([r[0] for r in rows], dtype=np.int64)
        allowed.flags.writeable = False  # shared by every query with the same filter
        return allowed


def validate_where(where: str) -> None:
    """Accept only one boolean expression: no statements, semicolons or comments."""
    import duckdb

    if ";" in where or "--" in where or "/*" in where:
        raise QueryError(f"bad --where {where!r}: only a boolean expression is allowed (no ';' or comments)")
    try:
        statements = duckdb.extract_statements(f"SELECT 1 FROM slides WHERE ({where})")
    except duckdb.Error as exc:
        raise QueryError(f"bad --where {where!r}: {_first_line(exc)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise QueryError(f"bad --where {where!r}: only a boolean expression is allowed")


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def index_info(path: str | Path) -> dict[str, Any]:
    """Counts, encoder, bank, tiling, FAISS indexes and failed slides of an index, as a dict."""
    catalog = Catalog(path)
    m = catalog.manifest
    failed = catalog.db.sql("SELECT slide_id, error FROM slides WHERE status <> 'ok' ORDER BY slide_id").fetchall()
    return {
        "schema_version": m["schema_version"], "created": m["created"], "updated": m["updated"],
        "encoder": m["encoder"], "bank": m["bank"], "tiling": m["tiling"], "aggregation": m["aggregation"],
        "counts": m["counts"], "indexes": m["indexes"], "timings": m.get("timings", {}),
        "failed": [{"slide_id": s, "error": e} for s, e in failed],
    }
