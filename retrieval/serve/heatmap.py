"""A query's patch-level similarity over one slide as a PNG with alpha, covering the slide's level-0 extent.

The image spans the whole slide (width : height = level-0 width : height), so a viewer lays it over the
DeepZoom image at the same place and size (OpenSeadragon: ``x = 0, width = 1``). Each patch paints its
level-0 square; colour and opacity grow with its cosine similarity to the query, scaled from the slide's
lowest to its highest patch; pixels without a patch are transparent.
"""

from __future__ import annotations

import io

import numpy as np

MAX_PX = 1024  # longer side of the heatmap image
# colour ramp from low to high similarity: blue → cyan → yellow → red
RAMP = np.array([[40, 60, 220], [40, 200, 220], [250, 220, 40], [230, 30, 30]], np.float32)


def patch_similarities(searcher, slide_row: int, q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cosine similarity of ``q`` (d,) to every patch of a slide: (PATCH_FIELDS records, similarities)."""
    arrays = searcher.arrays
    start, count = (int(v) for v in arrays.slide_patches[slide_row])
    features = searcher.catalog.snapshot.patch_features(slide_row, start, count)
    return arrays.patches[start:start + count], features.astype(np.float32) @ q.astype(np.float32)


def heatmap_png(searcher, slide_row: int, q: np.ndarray, max_px: int = MAX_PX) -> tuple[bytes, dict[str, float]]:
    """The PNG of query ``q`` over slide ``slide_row`` and its facts (similarity range, level-0 px per pixel)."""
    from PIL import Image

    meta = searcher.arrays.metadata[slide_row]
    width, height = int(meta["width"]), int(meta["height"])
    scale = max(width, height) / max_px
    out_w, out_h = max(1, round(width / scale)), max(1, round(height / scale))
    patches, sims = patch_similarities(searcher, slide_row, q)
    rgba = np.zeros((out_h, out_w, 4), np.uint8)
    lo, hi = (float(sims.min()), float(sims.max())) if len(sims) else (0.0, 0.0)
    t = (sims - lo) / (hi - lo) if hi > lo else np.ones_like(sims)
    colour = _ramp(t)
    alpha = (60 + 170 * t).astype(np.uint8)
    x0 = np.floor(patches["x"] / scale).astype(int)
    y0 = np.floor(patches["y"] / scale).astype(int)
    x1 = np.maximum(x0 + 1, np.ceil((patches["x"] + patches["size"]) / scale).astype(int))
    y1 = np.maximum(y0 + 1, np.ceil((patches["y"] + patches["size"]) / scale).astype(int))
    for i in np.argsort(t, kind="stable"):  # the most similar patch wins where squares overlap
        rgba[y0[i]:y1[i], x0[i]:x1[i], :3] = colour[i]
        rgba[y0[i]:y1[i], x0[i]:x1[i], 3] = alpha[i]
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, "PNG")
    return buffer.getvalue(), {"min": lo, "max": hi, "level0_px_per_pixel": scale, "patches": int(len(sims))}


def _ramp(t: np.ndarray) -> np.ndarray:
    """RAMP colours at positions ``t`` in [0, 1] (linear between the stops).

    >>> _ramp(np.array([0.0, 1.0])).tolist()
    [[40, 60, 220], [230, 30, 30]]
    """
    pos = np.clip(t, 0, 1) * (len(RAMP) - 1)
    i = np.minimum(pos.astype(int), len(RAMP) - 2)
    f = (pos - i)[:, None]
    return ((1 - f) * RAMP[i] + f * RAMP[i + 1]).round().astype(np.uint8)
