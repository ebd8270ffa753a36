"""Search matches as GeoJSON that QuPath imports: one FeatureCollection per hit slide, a Polygon per matched patch.

Coordinates are level-0 pixels with the origin at the image's top-left corner, which is how QuPath places
objects on the full-resolution image. Each Feature's properties follow QuPath's object reader
(``objectType``, ``name``, ``classification`` {name, color}, ``isLocked``, ``measurements``, ``metadata``);
the match itself is also stated plainly (``score``, ``rank``, ``query``, ``prototype``, ...), which QuPath keeps
out of its way and other tools can read.
"""

from __future__ import annotations

import hashlib
import uuid
from pathlib import Path
from typing import Any

from retrieval.query.results import SearchResult, dumps_bytes, hit_json

SUFFIX = ".geojson"
MEDIA_TYPE = "application/geo+json"
_NAMESPACE = uuid.UUID("7d3c1f0e-5a43-4c8b-9a43-2f1b6e0c9d55")  # stable feature ids across exports


def hit_feature_collection(hit: dict[str, Any], kind: str, query: str) -> dict[str, Any]:
    """The FeatureCollection of one hit (as ``results.hit_json`` gives it): its matched patches as closed square
    Polygons (level-0 px).

    >>> hit = {"rank": 1, "slide_id": "S1", "score": 0.9,
    ...        "patches": [{"patch_row": 7, "x": 448, "y": 896, "size": 224, "score": 0.8, "prototype": "tumour"}]}
    >>> fc = hit_feature_collection(hit, "text", "tumour")
    >>> fc["features"][0]["geometry"]["coordinates"][0]
    [[448, 896], [672, 896], [672, 1120], [448, 1120], [448, 896]]
    >>> fc["features"][0]["properties"]["objectType"], fc["features"][0]["properties"]["classification"]["name"]
    ('annotation', 'tumour')
    """
    features = [_feature(hit, kind, query, order, patch) for order, patch in enumerate(hit["patches"], start=1)]
    return {"type": "FeatureCollection", "features": features,
            "slide_id": hit["slide_id"], "query": query, "kind": kind, "rank": hit["rank"], "score": hit["score"]}


def write_hit_geojson(result: SearchResult, out_dir: str | Path) -> list[Path]:
    """Write ``<slide_id>.geojson`` (a safe file name) for every hit of ``result``; returns the files in rank order."""
    from indexer.slides.ids import safe_file_name

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for hit in result.hits:
        path = out_dir / f"{safe_file_name(hit.slide_id)}{SUFFIX}"
        path.write_bytes(geojson_bytes(hit_feature_collection(hit_json(hit), result.kind, result.query)))
        written.append(path)
    return written


def geojson_bytes(collection: dict[str, Any]) -> bytes:
    """The file's bytes (UTF-8 JSON, indented)."""
    return dumps_bytes(collection, indent=2) + b"\n"


def _feature(hit: dict[str, Any], kind: str, query: str, order: int, patch: dict[str, Any]) -> dict[str, Any]:
    x, y, s = int(patch["x"]), int(patch["y"]), int(patch["size"])
    ring = [[x, y], [x + s, y], [x + s, y + s], [x, y + s], [x, y]]
    label, score, rank, slide_id = patch["prototype"] or "match", float(patch["score"]), hit["rank"], hit["slide_id"]
    identity = f"{slide_id}\n{kind}\n{query}\n{x},{y},{s}"
    return {
        "type": "Feature",
        "id": str(uuid.uuid5(_NAMESPACE, identity)),
        "geometry": {"type": "Polygon", "coordinates": [ring]},
        "properties": {
            "objectType": "annotation",
            "name": f"slidesearch #{rank}.{order} {label} {score:.3f}",
            "classification": {"name": label, "color": _colour(label)},
            "isLocked": True,
            "measurements": {"score": score, "rank": rank, "patch_rank": order, "slide_score": float(hit["score"])},
            "metadata": {"query": query, "kind": kind, "prototype": patch["prototype"], "slide_id": slide_id},
            "score": score, "rank": rank, "patch_rank": order, "query": query, "kind": kind,
            "prototype": patch["prototype"], "slide_id": slide_id, "patch_row": int(patch["patch_row"]),
        },
    }


def _colour(name: str) -> list[int]:
    """A stable, saturated RGB colour per class name.

    >>> _colour("tumour") == _colour("tumour"), len(_colour("x"))
    (True, 3)
    """
    import colorsys

    hue = int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return [round(255 * c) for c in colorsys.hsv_to_rgb(hue, 0.75, 0.9)]
