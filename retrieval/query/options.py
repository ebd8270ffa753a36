"""The search options, defined once for the CLI (typer) and the HTTP API (FastAPI).

Each ``Opt`` holds an option's flag, default, help and allowed values; ``Opt.cli()`` makes the typer option of
a ``slidesearch search …`` command, ``Opt.http()`` the FastAPI query parameter of the matching route (its
description names the flag; HTTP adds size limits, since a URL is untrusted input). The query pipeline
validates the values themselves (``QueryError``), so both front ends answer alike.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

SOURCES = ("image", "report", "both")
MODES = ("proto", "mean")
FUSIONS = ("concat", "mean", "max")
GROUPS = ("case",)


@dataclass(frozen=True)
class Opt:
    """One search option.

    Args:
        flags: the CLI flags (the long one last), e.g. ``("-k", "--k")``.
        default: the default on both front ends (``http_default`` where HTTP differs: lists, negated flags).
        help: the help text (the CLI's ``--help`` and the HTTP description).
        choices: the allowed values, when they are few.
        limits: FastAPI ``Query`` limits of the HTTP parameter (``max_length``, ``ge``, ``le``).
    """

    flags: tuple[str, ...]
    default: Any
    help: str
    choices: tuple[str, ...] = ()
    limits: dict[str, Any] = field(default_factory=dict)
    http_default: Any = ...

    def cli(self):
        """The typer option."""
        import typer

        return typer.Option(self.default, *self.flags, help=self.help)

    def http(self, description: str | None = None):
        """The FastAPI query parameter (``description``: HTTP wording, where the flag's help does not fit)."""
        from fastapi import Query

        default = self.default if self.http_default is ... else self.http_default
        pattern = {"pattern": f"^({'|'.join(self.choices)})$"} if self.choices else {}
        return Query(default, description=description or f"{self.help} (as `{self.flags[-1]}`)", **pattern,
                     **self.limits)


K = Opt(("-k", "--k"), 10, "Number of slides (or cases) to return.", limits={"ge": 1, "le": 100})
WHERE = Opt(("--where",), None, "SQL filter over slide columns, e.g. \"organ = 'lung'\".", limits={"max_length": 2000})
EXCLUDE_SAME = Opt(("--exclude-same",), None, "Drop the query slide and slides sharing this column's value "
                   "(e.g. patient_id).", limits={"max_length": 200})
MODE = Opt(("--mode",), "proto", "proto (prototype slide vectors) or mean (mean-pool baseline).")
NO_EXPAND = Opt(("--no-expand",), False, "Do not expand disease names with their attributes.", http_default=True)
SOURCE = Opt(("--source",), None, "image, report or both (default: both when the index has reports, report when "
             "its encoder has random weights, as tiny has); report and image rankings are fused by RRF.",
             choices=SOURCES)
HAS = Opt(("--has",), None, "Keep slides whose report states an attribute: X (affirmed), 'not X' (negated, never "
          "affirmed) or 'maybe X' (uncertain); repeat for AND, e.g. --has necrosis --has 'not mucin'.",
          limits={"max_length": 10}, http_default=[])
SPACE = Opt(("--space",), None, "Slide space: proto, mean, or an imported slide encoder (index --slide-encoder).",
            limits={"max_length": 100})
TARGET_STAIN = Opt(("--target-stain",), None, "Only slides of this stain (e.g. H&E) as results: an IHC query finds "
                   "H&E slides/cases.", limits={"max_length": 100})
FUSION = Opt(("--fusion",), "mean", "Case vector: mean (all slides), concat (per-stain means) or max (best slide).")
GROUP = Opt(("--group",), None, "'case': return cases (best slide each, slides by stain); the query's case is "
            "left out.")
# CLI only
JSON = Opt(("--json",), False, "Print results as JSON.")
THUMBNAILS = Opt(("--thumbnails",), None, "Write one PNG per hit, best patches outlined, here.")
GEOJSON = Opt(("--geojson",), None, "Write <slide_id>.geojson per hit here: its matched patches as QuPath "
              "annotations (level-0 px; File > Import objects in QuPath).")
DEVICE = Opt(("--device",), "auto", "auto, cpu or cuda (for embedding the query).")
