"""Open an index directory: manifest, DuckDB views over its Parquet tables, FAISS indexes, SQL filters."""

from __future__ import annotations

import tempfile
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from indexer.errors import QueryError
from indexer.store.reader import Snapshot

ALLOWED_CACHE = 256  # distinct filters remembered per open index


class Catalog:
    """A read-only view of one version of an index; open once, query many times.

    Opening reads ``CURRENT`` once; every later read uses only the files that version names, so a write
    in progress (or finished) never changes what an open catalog answers.

    Attributes:
        snapshot: the version it reads (:class:`indexer.store.reader.Snapshot`).
        manifest: identity and version facts (encoder, tiling, bank, aggregation, counts, indexes).
    """

    def __init__(self, path: str | Path):
        self.snapshot = Snapshot(path)
        self.root = self.snapshot.paths.root
        self.manifest = self.snapshot.manifest()
        self._allowed: dict[tuple, np.ndarray | None] = {}  # filter → allowed rows (repeated queries reuse it)

    @cached_property
    def db(self):
        """A DuckDB connection with views slides (segment rows joined with user metadata), patches,
        subvectors and prototypes; tombstoned slides and their rows are left out."""
        import duckdb
        import pyarrow as pa

        from indexer.store.segments import PATCH_SCHEMA, SLIDE_SCHEMA, SUB_SCHEMA
        from retrieval.query.case_columns import derived_select

        con = duckdb.connect()
        con.execute(f"SET temp_directory = {_quote(tempfile.gettempdir())}")  # never spill into the user's folder
        con.register("tombstones", pa.table({"slide_row": self.snapshot.tombstones}))
        for name, schema in (("slides", SLIDE_SCHEMA), ("patches", PATCH_SCHEMA), ("subvectors", SUB_SCHEMA)):
            files = self.snapshot.table_files(name)
            if files:
                source = f"read_parquet([{', '.join(_quote(f) for f in files)}], union_by_name = true)"
            else:
                con.register(f"empty_{name}", schema.empty_table())
                source = f"empty_{name}"
            con.execute(f"CREATE VIEW seg_{name} AS SELECT * FROM {source} "
                        "WHERE slide_row NOT IN (SELECT slide_row FROM tombstones)")
        meta = self.snapshot.metadata_file
        if meta is None:
            con.execute("CREATE VIEW slides_joined AS SELECT * FROM seg_slides")
        else:
            import pyarrow.parquet as pq

            user = [c for c in pq.read_schema(meta).names if c != "slide_id" and c not in SLIDE_SCHEMA.names]
            cols = "".join(f', m."{c}"' for c in user)
            con.execute(f"CREATE VIEW slides_joined AS SELECT s.*{cols} FROM seg_slides s "
                        f"LEFT JOIN read_parquet({_quote(meta)}) m ON s.slide_id = m.slide_id")
        joined = [r[0] for r in con.execute("DESCRIBE slides_joined").fetchall()]
        con.execute(f"CREATE VIEW slides AS SELECT {derived_select(joined)} FROM slides_joined")  # case_id, stain
        con.execute("CREATE VIEW patches AS SELECT * FROM seg_patches")
        con.execute("CREATE VIEW subvectors AS SELECT * FROM seg_subvectors")
        con.execute(f"CREATE VIEW prototypes AS SELECT * FROM read_parquet({_quote(self.snapshot.paths.prototypes)})")
        return con

    @cached_property
    def slides(self):
        """Live slides (with their metadata) as a pyarrow table, by slide_row."""
        return self.db.sql("SELECT * FROM slides ORDER BY slide_row").to_arrow_table()

    @cached_property
    def filters(self):
        """The slides table in a sandboxed DuckDB that evaluates parsed ``--where`` filters (retrieval/query/filters.py)."""
        from retrieval.query.filters import FilterEngine

        return FilterEngine(self.slides)

    def faiss(self, name: str):
        """Load (once) FAISS index ``name`` (slides, slides_mean, subvectors or patches) over all live segments
        (:func:`indexer.store.rerank.open_index`: shared quantizers attached, compressed hits re-ranked exactly)."""
        cache = self.__dict__.setdefault("_faiss", {})
        if name not in cache:
            from indexer.store.rerank import open_index

            files, _ = self.snapshot.faiss_parts(name)
            if not files:
                import faiss

                dim = self.manifest["encoder"]["dim"] * (self.manifest["bank"]["K"] if name == "slides" else 1)
                cache[name] = faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
            else:
                cache[name] = open_index(self.snapshot, name)
        return cache[name]

    def is_current(self) -> bool:
        """Whether a newer version has been committed since this catalog was opened."""
        return self.snapshot.is_current()

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
        if not has_where and exclude_row is None and len(self.snapshot.tombstones) == 0:
            return None  # every vector in the FAISS indexes is a live slide's
        parsed = self.filters.parse(where) if has_where else None  # QueryError for anything but one expression
        clauses, params = ["status = 'ok'"], []
        if exclude_row is not None:
            clauses.append("slide_row <> ?")
            params.append(int(exclude_row))
            if exclude_same:
                if exclude_same not in self.slides.column_names:
                    raise QueryError(f"--exclude-same {exclude_same!r}: no such column (columns: {', '.join(self.slides.column_names)})")
                column = '"' + exclude_same.replace('"', '""') + '"'
                clauses.append(f"{column} IS DISTINCT FROM (SELECT {column} FROM slides WHERE slide_row = ?)")
                params.append(int(exclude_row))
        allowed = self.filters.rows(parsed, " AND ".join(clauses), params)
        allowed.flags.writeable = False  # shared by every query with the same filter
        return allowed


def _quote(path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0]


def index_info(path: str | Path | Catalog) -> dict[str, Any]:
    """Identity, version, counts, FAISS indexes, segments, imported slide-encoder spaces, report tables and failed
    slides of an index (or an open catalog)."""
    from retrieval.query.spaces import imported_spaces

    catalog = path if isinstance(path, Catalog) else Catalog(path)
    m = catalog.manifest
    failed = catalog.db.sql("SELECT slide_id, error FROM slides WHERE status <> 'ok' ORDER BY slide_id").fetchall()
    return {
        "schema_version": m["schema_version"], "created": m["created"], "updated": m["updated"], "version": m["version"],
        "encoder": m["encoder"], "bank": m["bank"], "tiling": m["tiling"], "aggregation": m["aggregation"],
        "counts": m["counts"], "segments": m["segments"], "indexes": m["indexes"], "timings": m.get("timings", {}),
        "operation": m.get("operation", ""), "devices": m.get("devices", {}),
        "spaces": imported_spaces(catalog), "reports": _reports_info(catalog),
        "failed": [{"slide_id": s, "error": e} for s, e in failed],
    }


def _reports_info(catalog: Catalog) -> dict[str, Any] | None:
    """What the version's report tables hold (None: no reports indexed)."""
    rel = catalog.snapshot.version.reports
    if not rel:
        return None
    from indexer.reports.store import ReportFiles

    info = ReportFiles(catalog.root / rel).info
    return {key: info.get(key) for key in ("column", "model", "slides", "sentences", "attributes")}
