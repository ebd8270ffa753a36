"""The ``case_id``, ``stain`` and ``stain_source`` columns every slide gets in the catalog's ``slides`` view.

- ``case_id``: the metadata's ``case_id``; else its ``patient_id``; else the slide's own id (a case of one).
- ``stain``: the metadata's ``stain``; else the stain detected at index time (``indexer/tiles/stain.py``).
- ``stain_source``: ``metadata`` or ``detected`` (NULL when neither is known, e.g. a failed slide).

Derived when the catalog opens rather than stored, so a metadata CSV that names cases or stains later
changes them at once, without rewriting any segment.
"""

from __future__ import annotations

DERIVED = ("case_id", "stain", "stain_source")


def _text(column: str) -> str:
    """SQL: the column as trimmed text, NULL when empty."""
    return f"NULLIF(TRIM(CAST(\"{column}\" AS VARCHAR)), '')"


def derived_select(columns: list[str]) -> str:
    """The SELECT list over a view with ``columns`` that replaces or adds the derived columns.

    >>> print(derived_select(["slide_id", "patient_id"]).replace("VARCHAR", "TEXT"))
    *, COALESCE(NULLIF(TRIM(CAST("patient_id" AS TEXT)), ''), CAST(slide_id AS TEXT)) AS case_id, CAST(NULL AS TEXT) AS stain, CAST(NULL AS TEXT) AS stain_source
    """
    present = set(columns)
    case = [_text(c) for c in ("case_id", "patient_id") if c in present] + ["CAST(slide_id AS VARCHAR)"]
    known = [(_text(c), source) for c, source in (("stain", "metadata"), ("stain_detected", "detected")) if c in present]
    excluded = ", ".join(f'"{c}"' for c in DERIVED if c in present)
    star = f"* EXCLUDE ({excluded})" if excluded else "*"
    stain = f"COALESCE({', '.join(e for e, _ in known)})" if known else "NULL"
    source = ("CASE " + " ".join(f"WHEN {e} IS NOT NULL THEN '{s}'" for e, s in known) + " END") if known else "NULL"
    return f"{star}, COALESCE({', '.join(case)}) AS case_id, CAST({stain} AS VARCHAR) AS stain, " \
           f"CAST({source} AS VARCHAR) AS stain_source"
