"""Slide-encoder embeddings imported from TRIDENT `.h5` files, kept in segments as extra slide spaces.

TRIDENT (``extract_slide_features``) writes one file per slide, ``<slide_features_dir>/<slide name>.h5``, whose
``features`` dataset is that slide's embedding from a slide encoder (TITAN, PRISM, MADELEINE, FEATHER,
``mean-<patch encoder>``, ...): shape (D,), or (1, D) from batched runs; its ``coords`` are the patches it came
from. ``slidesearch index --slide-features DIR --slide-encoder NAME`` reads it for each slide the run encodes
and stores the L2-normalised vector in the slide's segment as ``space-<NAME>.npy`` (one row per ok slide, in
``vector_rows`` order; zeros for a slide without one), so ``search slide --space NAME`` can search it.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from indexer.errors import IndexError_, UserError

SPACE_PREFIX = "space-"
RECORD_KEY = "slide_spaces"  # staged record field: {space name: vector as a list}
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
RESERVED = ("proto", "mean")


def check_space_name(name: str) -> str:
    """A slide-encoder name usable as a space (letters, digits, ``_.-``; not ``proto`` or ``mean``)."""
    if not _NAME.match(name or "") or name in RESERVED:
        raise UserError(f"--slide-encoder {name!r}: use letters, digits, '_', '.' or '-' (not proto or mean), "
                        "e.g. titan or mean-conch_v15")
    return name


def read_slide_embedding(features_dir: str | Path, slide_id: str) -> np.ndarray:
    """The unit slide embedding (D,) of ``slide_id`` from ``<features_dir>/<slide_id>.h5`` (TRIDENT layout).

    Raises:
        UserError: no file, not HDF5, no ``features`` dataset, not one vector, or not finite / all zero.
    """
    import h5py

    path = Path(features_dir) / f"{slide_id}.h5"
    if not path.is_file():
        raise UserError(f"no slide features file {path} for slide {slide_id}")
    try:
        with h5py.File(path, "r") as h5:
            if "features" not in h5:
                raise UserError(f"{path}: expected a 'features' dataset (TRIDENT slide-encoder layout)")
            vector = np.asarray(h5["features"], np.float32)
    except OSError as exc:
        raise UserError(f"{path}: not a readable HDF5 file ({exc})") from None
    if vector.ndim == 2 and vector.shape[0] == 1:
        vector = vector[0]
    if vector.ndim != 1 or vector.size == 0:
        raise UserError(f"{path}: slide features have shape {vector.shape}; expected one vector (D,) or (1, D)")
    norm = float(np.linalg.norm(vector))
    if not np.isfinite(norm) or norm == 0:
        raise UserError(f"{path}: slide features are all zero or not finite")
    return vector / norm


def write_segment_spaces(folder: Path, spaces: list[dict[str, np.ndarray]]) -> None:
    """Write ``space-<name>.npy`` for every space in ``spaces`` (one dict per ok slide, in vector order;
    zeros for slides without that space)."""
    for name in sorted({name for slide in spaces for name in slide}):
        dims = {len(slide[name]) for slide in spaces if name in slide}
        if len(dims) != 1:
            raise IndexError_(f"slide space {name!r}: slides of one segment have embeddings of sizes {sorted(dims)}")
        out = np.zeros((len(spaces), dims.pop()), np.float32)
        for i, slide in enumerate(spaces):
            if name in slide:
                out[i] = slide[name]
        np.save(Path(folder) / f"{SPACE_PREFIX}{name}.npy", out)


def segment_spaces(folder: Path) -> list[str]:
    """Names of the slide spaces a segment holds."""
    return sorted(p.name[len(SPACE_PREFIX):-4] for p in Path(folder).glob(f"{SPACE_PREFIX}*.npy"))


def slide_spaces_of(folder: Path, position: int) -> dict[str, list[float]]:
    """The space vectors of the ``position``-th ok slide of a segment (for compaction to carry them over)."""
    out = {}
    for name in segment_spaces(folder):
        vector = np.load(Path(folder) / f"{SPACE_PREFIX}{name}.npy", mmap_mode="r")[position]
        if np.any(vector):
            out[name] = np.asarray(vector, np.float32).tolist()
    return out


def read_space(snapshot, name: str, rows: np.ndarray) -> np.ndarray:
    """Vectors (len(rows), D) of slide ``rows`` in space ``name`` across a snapshot's segments (zeros where missing).

    Raises:
        IndexError_: segments disagree on the space's dimension.
    """
    parts, dims = {}, set()
    for folder in snapshot.segment_dirs():
        path = Path(folder) / f"{SPACE_PREFIX}{name}.npy"
        if path.is_file():
            vectors = np.load(path, mmap_mode="r")
            dims.add(vectors.shape[1])
            parts[folder] = (np.load(Path(folder) / "vector_rows.npy"), vectors)
    if len(dims) > 1:
        raise IndexError_(f"slide space {name!r} has embeddings of sizes {sorted(dims)} in different segments; "
                          "re-import it with one slide encoder")
    out = np.zeros((len(rows), dims.pop() if dims else 1), np.float32)
    for vector_rows, vectors in parts.values():
        order = np.argsort(vector_rows)
        pos = np.searchsorted(vector_rows[order], rows)
        pos = np.minimum(pos, len(order) - 1)
        found = vector_rows[order][pos] == rows
        out[found] = vectors[order[pos[found]]]
    return out
