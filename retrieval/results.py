"""Typed search results: hits with their metadata and an explanation (prototypes and patches that matched).

Records use ``slots`` dataclasses (not frozen ones, whose constructors cost ~3× more): a slide query builds up
to 7 records per hit, a measurable share of its sub-millisecond latency.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable


@dataclass(slots=True)
class PrototypeMatch:
    """A prototype that contributed to a hit: its share of the slide and how well it matched."""

    proto_id: int
    name: str
    mass: float
    similarity: float


@dataclass(slots=True)
class PatchMatch:
    """A patch of the hit slide that matched the query (level-0 coordinates)."""

    patch_row: int
    x: int
    y: int
    size: int
    score: float
    prototype: str = ""


@dataclass(slots=True)
class SearchHit:
    """One retrieved slide."""

    rank: int
    slide_id: str
    slide_row: int
    score: float
    metadata: dict[str, Any]
    prototypes: tuple[PrototypeMatch, ...] = ()
    patches: tuple[PatchMatch, ...] = ()


@dataclass(frozen=True)
class SearchResult:
    """The ranked hits of one query, with how the query was interpreted."""

    kind: str  # "text" | "slide" | "patch"
    query: str
    hits: tuple[SearchHit, ...]
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (for --json)."""
        return asdict(self)

    @property
    def slide_ids(self) -> list[str]:
        """The hit slide_ids in rank order."""
        return [h.slide_id for h in self.hits]


def result_json(result: SearchResult, thumbnails: Iterable[Any] = ()) -> dict[str, Any]:
    """The JSON shape of a search result, shared by ``search --json`` and the HTTP API."""
    return {**result.to_dict(), "thumbnails": [str(p) for p in thumbnails]}


def dumps(obj: Any, indent: int | None = None) -> str:
    """JSON text of ``obj``: numpy scalars and arrays become numbers and lists, anything else unknown a string."""
    return json.dumps(obj, indent=indent, default=_json_default)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)
