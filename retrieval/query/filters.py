"""User ``--where`` filters: parsed by DuckDB, checked against an allow-list, re-emitted, run in a sandbox."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa

from indexer.errors import QueryError

MAX_WHERE_CHARS = 10_000
MAX_DEPTH = 64  # nesting of expression nodes
MAX_CONCAT = 16  # operands of || and concat() in all: string growth, unlike memory_limit, is not capped by DuckDB
MEMORY_LIMIT = "256MB"
TIMEOUT_S = 5.0

COMPARISONS = {
    "COMPARE_EQUAL": "=", "COMPARE_NOTEQUAL": "<>", "COMPARE_LESSTHAN": "<", "COMPARE_GREATERTHAN": ">",
    "COMPARE_LESSTHANOREQUALTO": "<=", "COMPARE_GREATERTHANOREQUALTO": ">=",
    "COMPARE_DISTINCT_FROM": "IS DISTINCT FROM", "COMPARE_NOT_DISTINCT_FROM": "IS NOT DISTINCT FROM",
}
BINARY_OPERATORS = {"+": "+", "-": "-", "*": "*", "/": "/", "//": "//", "%": "%", "||": "||",
                    "~~": "LIKE", "!~~": "NOT LIKE", "~~*": "ILIKE", "!~~*": "NOT ILIKE", "~~~": "GLOB"}
ESCAPE_OPERATORS = {"like_escape": "LIKE", "not_like_escape": "NOT LIKE",
                    "ilike_escape": "ILIKE", "not_ilike_escape": "NOT ILIKE"}
FUNCTIONS = frozenset({
    "abs", "ceil", "ceiling", "floor", "round", "sign", "greatest", "least", "nullif", "isnan", "isinf",
    "lower", "upper", "lcase", "ucase", "length", "strlen", "trim", "ltrim", "rtrim", "substring", "substr",
    "left", "right", "concat", "strpos", "instr", "contains", "starts_with", "ends_with",
    "prefix", "suffix", "regexp_matches", "regexp_full_match",
})
AGGREGATES = frozenset({"count", "count_star", "sum", "avg", "mean", "min", "max", "any_value", "first", "last",
                        "string_agg", "list", "array_agg", "median", "mode", "bool_and", "bool_or", "stddev"})
CAST_TYPES = {name: name for name in ("VARCHAR", "INTEGER", "BIGINT", "SMALLINT", "TINYINT", "HUGEINT", "DOUBLE",
                                      "FLOAT", "REAL", "BOOLEAN", "DATE", "TIMESTAMP", "DECIMAL")}
CAST_TYPES.update({"TEXT": "VARCHAR", "STRING": "VARCHAR", "INT": "INTEGER", "INT4": "INTEGER", "INT8": "BIGINT",
                   "BOOL": "BOOLEAN", "FLOAT8": "DOUBLE", "NUMERIC": "DECIMAL"})
_INTEGER = re.compile(r"-?[0-9][0-9_]*")
_NUMERIC = re.compile(r"-?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?(?:[eE][+-]?[0-9]+)?")
_IGNORED = {"query_location", "query_location_length", "is_operator", "is_legacy_function_call"}

_parser_lock = threading.Lock()
_parser: Any = None
_sandboxes: dict[str, Any] = {}  # memory_limit → a locked-down in-memory DuckDB shared by the engines


@dataclass(frozen=True)
class Filter:
    """A validated ``--where`` expression.

    Attributes:
        where: the text the user wrote.
        sql: the canonical SQL rebuilt from the tree: fully parenthesized, identifiers and strings quoted.
        columns: the table columns it reads, sorted.
        tree: DuckDB's parse tree of ``sql`` (json_serialize_sql form), the same as that of ``where``.
    """

    where: str
    sql: str
    columns: tuple[str, ...]
    tree: Mapping[str, Any] = field(compare=False, hash=False, repr=False)


def parse_where(where: str, columns: Mapping[str, pa.DataType] | Sequence[str]) -> Filter:
    """Parse and validate one boolean expression over ``columns``.

    Args:
        where: the user's text, e.g. ``organ = 'lung' AND grade >= 2``.
        columns: the table's column names (a mapping to their Arrow types, or just the names).

    Returns:
        The Filter, whose ``sql`` means exactly the validated tree.

    Raises:
        QueryError: for anything but one scalar expression built from the allowed pieces.

    >>> parse_where("Organ = 'a;b' -- note", {"organ": pa.string()}).sql
    '("organ" = \\'a;b\\')'
    >>> parse_where("1 = 1) OR (true", ["organ"])
    Traceback (most recent call last):
    indexer.errors.QueryError: bad --where '1 = 1) OR (true': syntax error at or near ")"
    """
    if not isinstance(where, str) or not where.strip():
        raise _error(where, "empty expression")
    if len(where) > MAX_WHERE_CHARS:
        raise _error(where, f"longer than {MAX_WHERE_CHARS} characters")
    tree = _parse(where)
    used: set[str] = set()
    try:
        sql = _Emitter(where, list(columns), used).emit(tree, 0)
    except (KeyError, TypeError, AttributeError, IndexError):
        raise _error(where, "unexpected parse tree") from None
    canonical = _parse(sql, where)
    if _strip(canonical) != _strip(tree):  # the re-emitted text must mean the very same tree
        raise _error(where, "cannot be written in canonical form")
    return Filter(where, sql, tuple(sorted(used)), canonical)


class FilterEngine:
    """Runs filters over one table in a sandboxed DuckDB (no files, no settings, bounded memory and time).

    Args:
        table: the rows to filter, with an int64 ``key`` column (slide_row for slides).
        key: the column whose values are returned.
        memory_limit: DuckDB memory limit for the sandbox.
        timeout_s: a query running longer is interrupted.
    """

    def __init__(self, table: pa.Table, key: str = "slide_row", memory_limit: str = MEMORY_LIMIT,
                 timeout_s: float = TIMEOUT_S):
        self.table, self.key, self.timeout_s, self.memory_limit = table, key, timeout_s, memory_limit
        self.columns: dict[str, pa.DataType] = {f.name: f.type for f in table.schema}
        self._lock = threading.Lock()
        self._con = _sandbox(memory_limit)
        self._con.register("slides", table)  # zero-copy, and visible to this connection only

    def parse(self, where: str) -> Filter:
        """parse_where over this table's columns."""
        return parse_where(where, self.columns)

    def rows(self, where: Filter | str | None = None, extra_sql: str = "", params: Sequence[Any] = ()) -> np.ndarray:
        """Sorted ``key`` values of the rows where the filter and ``extra_sql`` are both TRUE.

        Args:
            where: a Filter, a user expression (parsed here), or None or blank for no user filter.
            extra_sql: trusted SQL conditions of the caller (may use ``?`` for ``params``); ANDed.
            params: values for the ``?`` in ``extra_sql`` (the canonical user SQL holds none).

        Raises:
            QueryError: the filter is refused, is not boolean, fails, or exceeds the time/memory cap.
        """
        import duckdb

        if isinstance(where, str):
            where = self.parse(where) if where.strip() else None
        flt = where
        text = flt.where if flt else extra_sql
        clauses = [f"({extra_sql})"] if extra_sql.strip() else []
        with self._lock:
            timer = threading.Timer(self.timeout_s, self._con.interrupt)  # a late interrupt is harmless
            timer.daemon = True
            timer.start()
            try:
                if flt is not None:
                    kind = self._con.execute(f"DESCRIBE SELECT {flt.sql} AS f FROM slides").fetchall()[0][1]
                    if kind not in ("BOOLEAN", '"NULL"'):
                        raise _error(text, f"not a boolean expression (it is {kind})")
                    clauses.append(flt.sql)
                key = '"' + self.key.replace('"', '""') + '"'
                query = f"SELECT {key} FROM slides WHERE {' AND '.join(clauses) or 'true'} ORDER BY {key}"
                out = self._con.execute(query, list(params)).fetchnumpy()[self.key]
            except duckdb.InterruptException:
                raise _error(text, f"took longer than {self.timeout_s:g} s") from None
            except duckdb.OutOfMemoryException:
                raise _error(text, f"needs more than {self.memory_limit} of memory") from None
            except duckdb.Error as exc:
                reason = _first_line(exc)
                if isinstance(exc, duckdb.BinderException):
                    reason += f" (columns: {', '.join(self.columns)})"
                raise _error(text, reason) from None
            finally:
                timer.cancel()
        return np.asarray(out, dtype=np.int64)


class _Emitter:
    """Walks a DuckDB expression tree, refusing what is not allowed and writing canonical SQL."""

    def __init__(self, where: str, columns: list[str], used: set[str]):
        self.where, self.columns, self.used, self.concat = where, columns, used, 0

    def fail(self, reason: str) -> QueryError:
        return _error(self.where, reason)

    def emit(self, node: Any, depth: int) -> str:
        if depth > MAX_DEPTH:
            raise self.fail(f"nested deeper than {MAX_DEPTH}")
        if not isinstance(node, dict):
            raise self.fail("unexpected parse tree")
        if node.get("alias"):
            raise self.fail("aliases are not allowed")
        cls, kind, sub = node.get("class"), node.get("type"), lambda n: self.emit(n, depth + 1)
        if cls == "CONSTANT":
            return self.constant(node["literal"])
        if cls == "COLUMN_REF":
            return self.column(node["column_names"])
        if cls == "CONJUNCTION" and kind in ("CONJUNCTION_AND", "CONJUNCTION_OR") and len(node["children"]) >= 2:
            return "(" + f" {kind[12:]} ".join(sub(c) for c in node["children"]) + ")"
        if cls == "COMPARISON" and kind in COMPARISONS:
            return f"({sub(node['left'])} {COMPARISONS[kind]} {sub(node['right'])})"
        if cls == "BETWEEN":
            return f"({sub(node['input'])} BETWEEN {sub(node['lower'])} AND {sub(node['upper'])})"
        if cls == "OPERATOR":
            children = node["children"]
            if kind == "OPERATOR_NOT" and len(children) == 1:
                return f"(NOT {sub(children[0])})"
            if kind in ("OPERATOR_IS_NULL", "OPERATOR_IS_NOT_NULL") and len(children) == 1:
                return f"({sub(children[0])} IS {'NOT ' if 'NOT' in kind else ''}NULL)"
            if kind == "COMPARE_IN" and len(children) >= 2:
                if any(c.get("class") != "CONSTANT" for c in children[1:]):
                    raise self.fail("IN takes a list of literals only")
                return f"({sub(children[0])} IN ({', '.join(sub(c) for c in children[1:])}))"
            if kind == "OPERATOR_COALESCE":
                return f"coalesce({', '.join(sub(c) for c in children)})"
        if cls == "CASE":
            checks = " ".join(f"WHEN {sub(c['when_expr'])} THEN {sub(c['then_expr'])}" for c in node["case_checks"])
            return f"(CASE {checks} ELSE {sub(node['else_expr'])} END)"
        if cls == "CAST":
            return self.cast(node, sub)
        if cls == "FUNCTION":
            return self.function(node, sub)
        if cls == "SUBQUERY":
            raise self.fail("subqueries are not allowed")
        if cls == "WINDOW":
            raise self.fail("window functions are not allowed")
        if cls == "PARAMETER":
            raise self.fail("parameters are not allowed")
        if cls in ("STAR", "POSITIONAL_REFERENCE"):
            raise self.fail("only named columns are allowed")
        raise self.fail(f"{str(kind or cls).lower().replace('_', ' ')} is not allowed")

    def constant(self, literal: Mapping[str, str]) -> str:
        kind, text = literal.get("kind"), literal.get("text", "")
        if kind == "STRING":
            return "'" + text.replace("'", "''") + "'"
        if kind == "BOOLEAN" and text.lower() in ("true", "false"):
            return text.upper()
        if kind == "NULL_LITERAL":
            return "NULL"
        if (kind == "INTEGER" and _INTEGER.fullmatch(text)) or (kind == "NUMERIC" and _NUMERIC.fullmatch(text)):
            return f"({text})" if text.startswith("-") else text
        raise self.fail(f"{str(kind).lower()} literals are not allowed")

    def column(self, names: list[str]) -> str:
        if len(names) == 2 and names[0].lower() == "slides":
            names = names[1:]
        if len(names) != 1:
            raise self.fail(f"unknown column {'.'.join(names)!r} (columns: {', '.join(self.columns)})")
        name = names[0]
        if name not in self.columns:
            matches = [c for c in self.columns if c.lower() == name.lower()]
            if len(matches) != 1:
                raise self.fail(f"unknown column {name!r} (columns: {', '.join(self.columns)})")
            name = matches[0]
        self.used.add(name)
        return '"' + name.replace('"', '""') + '"'

    def cast(self, node: Mapping[str, Any], sub) -> str:
        type_expr = node["type_expr"]
        name = CAST_TYPES.get(str(type_expr.get("type_name", "")).upper())
        if name is None or type_expr.get("schema") or type_expr.get("catalog"):
            raise self.fail(f"cast to {type_expr.get('type_name')!r} is not allowed")
        args = type_expr.get("children") or []
        if args:
            lits = [a.get("literal", {}) if a.get("class") == "CONSTANT" else {} for a in args]
            if name != "DECIMAL" or len(args) > 2 or any(lit.get("kind") != "INTEGER" for lit in lits):
                raise self.fail(f"cast to {name} with these arguments is not allowed")
            name += "(" + ", ".join(self.constant(lit) for lit in lits) + ")"
        return f"{'TRY_CAST' if node.get('try_cast') else 'CAST'}({sub(node['child'])} AS {name})"

    def function(self, node: Mapping[str, Any], sub) -> str:
        name = str(node.get("function_name", "")).lower()
        args = node.get("arguments") or []
        if node.get("schema") or node.get("catalog"):
            raise self.fail(f"function {name!r} is not allowed")
        if name in AGGREGATES or node.get("distinct") or node.get("filter") or node.get("order_bys", {}).get("orders"):
            raise self.fail("aggregate functions are not allowed")
        if any(a.get("name") for a in args):
            raise self.fail("named arguments are not allowed")
        if name in ("||", "concat"):
            self.concat += len(args)
            if self.concat > MAX_CONCAT:
                raise self.fail(f"more than {MAX_CONCAT} strings concatenated")
        parts = [sub(a["expression"]) for a in args]
        if name in BINARY_OPERATORS and len(parts) == 2:
            return f"({parts[0]} {BINARY_OPERATORS[name]} {parts[1]})"
        if name in ("+", "-") and len(parts) == 1:
            return f"({name} {parts[0]})"
        if name in ESCAPE_OPERATORS and len(parts) == 3:
            return f"({parts[0]} {ESCAPE_OPERATORS[name]} {parts[1]} ESCAPE {parts[2]})"
        if name in FUNCTIONS:
            return f"{name}({', '.join(parts)})"
        raise self.fail(f"function {name!r} is not allowed (allowed: {', '.join(sorted(FUNCTIONS))})")


def _parse(text: str, where: str | None = None) -> dict:
    """The WHERE tree of ``SELECT * FROM slides WHERE <text>``, or QueryError unless it is exactly that."""
    import duckdb

    global _parser
    where = text if where is None else where
    with _parser_lock:
        if _parser is None:
            _parser = duckdb.connect()
            _parser.execute("SET enable_external_access = false")
        try:
            out = _parser.execute("SELECT json_serialize_sql(?)", [f"SELECT * FROM slides WHERE {text}"]).fetchone()[0]
        except duckdb.Error as exc:
            raise _error(where, _first_line(exc)) from None
    try:
        result = json.loads(out)
    except (ValueError, RecursionError):
        raise _error(where, f"nested deeper than {MAX_DEPTH}") from None
    if result.get("error"):
        message = str(result.get("error_message", "cannot parse"))
        if "Only SELECT" in message:
            message = "only a boolean expression is allowed"
        elif "expression depth" in message:
            message = f"nested deeper than {MAX_DEPTH}"
        raise _error(where, message.splitlines()[0] if message.strip() else "cannot parse")
    statements = result.get("statements", [])
    if len(statements) != 1:
        raise _error(where, "only a boolean expression is allowed")
    node = statements[0].get("node", {})
    tree = node.get("where_clause")
    try:
        clauses = _strip({**node, "where_clause": None})
    except RecursionError:
        raise _error(where, f"nested deeper than {MAX_DEPTH}") from None
    if tree is None or clauses != _skeleton():
        raise _error(where, "only a boolean expression is allowed (no clauses, set operations or statements)")
    return tree


def _sandbox(memory_limit: str) -> Any:
    """A new connection to the sandbox database: no files (nor spilling), no extensions, one thread, locked."""
    import duckdb

    with _parser_lock:
        if memory_limit not in _sandboxes:
            db = duckdb.connect(config={"threads": 1, "memory_limit": memory_limit, "temp_directory": ""})  # no spill
            for setting in ("enable_external_access = false", "autoload_known_extensions = false",
                            "autoinstall_known_extensions = false", "lock_configuration = true"):
                db.execute(f"SET {setting}")
            _sandboxes[memory_limit] = db
        return _sandboxes[memory_limit].cursor()


def _skeleton() -> Any:
    if not hasattr(_skeleton, "value"):
        import duckdb

        out = duckdb.connect().execute("SELECT json_serialize_sql('SELECT * FROM slides WHERE true')").fetchone()[0]
        _skeleton.value = _strip({**json.loads(out)["statements"][0]["node"], "where_clause": None})
    return _skeleton.value


def _strip(node: Any) -> Any:
    """The tree without source positions and spelling details (for comparing trees)."""
    if isinstance(node, dict):
        if node.get("class") == "COLUMN_REF":  # names are resolved to the table's spelling
            node = {**node, "column_names": [str(node["column_names"][-1]).lower()]}
        return {k: _strip(v) for k, v in node.items() if k not in _IGNORED}
    if isinstance(node, list):
        return [_strip(v) for v in node]
    return node


def _error(where: Any, reason: str) -> QueryError:
    shown = where if not isinstance(where, str) or len(where) <= 200 else where[:200] + "…"
    return QueryError(f"bad --where {shown!r}: {reason}")


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__
