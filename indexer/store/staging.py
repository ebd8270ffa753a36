"""Per-slide work of an unfinished run (``staging/``): encoded patches kept so that a resumed run never
re-encodes them. Searches never read it; a commit removes what it took in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from indexer.slides.ids import safe_file_name
from indexer.store import crash
from indexer.store.atomic import atomic_path


@dataclass(frozen=True)
class StagedSlide:
    """One slide's encoded patches.

    Attributes:
        record: slide facts (slide_id, path, sha256, size_bytes, mtime_ns, vendor, width, height, mpp,
            mpp_source, magnification, fingerprint, n_patches, …).
        coords: (n, 2) int64 level-0 top-left corners, in patch order.
        features: (n, d) float16 unit-norm patch embeddings, in the same order.
        patch_size: patch side in level-0 pixels.
    """

    record: dict[str, Any]
    coords: np.ndarray
    features: np.ndarray
    patch_size: int


class Staging:
    """The ``staging/`` folder: one ``.npz`` per encoded slide, named from a safe encoding of its id."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)

    def path(self, slide_id: str) -> Path:
        return self.folder / f"{safe_file_name(slide_id)}.npz"

    def put(self, staged: StagedSlide) -> None:
        """Persist one slide atomically."""
        record = {**staged.record, "n_patches": int(len(staged.coords)), "patch_size": int(staged.patch_size)}
        crash.point("staging.write")
        with atomic_path(self.path(record["slide_id"])) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, coords=staged.coords.astype(np.int64), features=staged.features.astype(np.float16),
                         patch_size=np.int64(staged.patch_size),
                         record=np.frombuffer(json.dumps(record, default=jsonable).encode(), dtype=np.uint8))
            crash.point("staging.rename")
        crash.point("staging.done")

    def get(self, slide_id: str, with_features: bool = True) -> StagedSlide | None:
        """The staged slide, or None when nothing (readable) is staged for it."""
        path = self.path(slide_id)
        if not path.is_file():
            return None
        try:
            with np.load(path) as z:
                record = json.loads(z["record"].tobytes().decode())
                features = z["features"] if with_features else np.zeros((0, 0), np.float16)
                return StagedSlide(record, z["coords"], features, int(z["patch_size"]))
        except (OSError, ValueError, KeyError):  # a damaged file is work to redo, not an error
            path.unlink(missing_ok=True)
            return None

    def slide_ids(self) -> Iterator[str]:
        """Ids of every staged slide."""
        if not self.folder.is_dir():
            return
        for path in sorted(self.folder.glob("*.npz")):
            slide_id = None if path.name.startswith(".") else _slide_id_of(path)
            if slide_id is not None:
                yield slide_id

    def remove(self, slide_id: str) -> bool:
        """Delete what is staged for ``slide_id``; True when something was."""
        path = self.path(slide_id)
        found = path.exists()
        path.unlink(missing_ok=True)
        return found


def _slide_id_of(path: Path) -> str | None:
    try:
        with np.load(path) as z:
            return json.loads(z["record"].tobytes().decode())["slide_id"]
    except (OSError, ValueError, KeyError):
        path.unlink(missing_ok=True)
        return None


def jsonable(obj: Any) -> Any:
    """JSON fallback for numpy scalars and arrays and paths (strict otherwise)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
