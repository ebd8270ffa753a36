"""The index directory (DESIGN §4): paths, atomic writes, manifest, and per-slide staged features."""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from indexer.errors import IndexError_

SCHEMA_VERSION = 1
FEATURES_DIR = "features"
MANIFEST = "manifest.json"
TABLES = ("slides", "patches", "prototypes", "subvectors")
FAISS_FILES = ("slides", "slides_mean", "subvectors", "patches")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory, then rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_path(path: Path) -> "_AtomicPath":
    """Context manager yielding a temporary path that is renamed onto ``path`` on success."""
    return _AtomicPath(path)


class _AtomicPath:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> Path:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        os.close(fd)
        self.tmp = Path(tmp)
        return self.tmp

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            with open(self.tmp, "rb+") as fh:
                os.fsync(fh.fileno())
            os.replace(self.tmp, self.path)
        else:
            self.tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class StagedSlide:
    """One slide's encoded patches, kept so that re-aggregation and resumption never re-encode.

    Attributes:
        record: slide facts (slide_id, path, sha256, size, mtime_ns, vendor, width, height, mpp, …).
        coords: (n, 2) int64 level-0 top-left corners, in patch order.
        features: (n, d) float16 unit-norm patch embeddings, in the same order.
        patch_size: patch side in level-0 pixels.
    """

    record: dict[str, Any]
    coords: np.ndarray
    features: np.ndarray
    patch_size: int


class IndexDir:
    """Paths and low-level reads/writes of one index directory."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        self.features = self.root / FEATURES_DIR

    def table(self, name: str) -> Path:
        """Path of ``<name>.parquet``."""
        return self.root / f"{name}.parquet"

    def faiss(self, name: str) -> Path:
        """Path of ``<name>.faiss``."""
        return self.root / f"{name}.faiss"

    @property
    def manifest_path(self) -> Path:
        return self.root / MANIFEST

    def exists(self) -> bool:
        """True when a complete index (its manifest) is present."""
        return self.manifest_path.is_file()

    # -- manifest -------------------------------------------------------------------------
    def read_manifest(self) -> dict[str, Any]:
        """Load ``manifest.json``; raise a one-line error when it is missing or unreadable."""
        if not self.root.is_dir():
            raise IndexError_(f"{self.root}: no such index directory")
        if not self.manifest_path.is_file():
            raise IndexError_(f"{self.root}: not a slidesearch index (no {MANIFEST}); build one with `slidesearch index`")
        try:
            manifest = json.loads(self.manifest_path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise IndexError_(f"{self.manifest_path}: unreadable manifest ({exc})") from None
        if manifest.get("schema_version") != SCHEMA_VERSION:
            raise IndexError_(
                f"{self.root}: index schema_version {manifest.get('schema_version')} is not supported "
                f"(this slidesearch reads version {SCHEMA_VERSION})"
            )
        return manifest

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        """Write the manifest atomically (always the last file of an index update)."""
        manifest = {"schema_version": SCHEMA_VERSION, **manifest}
        manifest["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        manifest.setdefault("created", manifest["updated"])
        atomic_write_bytes(self.manifest_path, (json.dumps(manifest, indent=2, default=_jsonable) + "\n").encode())

    # -- staged per-slide features --------------------------------------------------------
    def staged_path(self, slide_id: str) -> Path:
        return self.features / f"{slide_id}.npz"

    def error_path(self, slide_id: str) -> Path:
        return self.features / f"{slide_id}.error.json"

    def stage_slide(self, staged: StagedSlide) -> None:
        """Persist one slide's features atomically and clear any earlier error for it."""
        slide_id = staged.record["slide_id"]
        with atomic_path(self.staged_path(slide_id)) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(
                    fh,
                    coords=staged.coords.astype(np.int64),
                    features=staged.features.astype(np.float16),
                    patch_size=np.int64(staged.patch_size),
                    record=np.frombuffer(json.dumps(staged.record, default=_jsonable).encode(), dtype=np.uint8),
                )
        self.error_path(slide_id).unlink(missing_ok=True)

    def stage_error(self, record: dict[str, Any]) -> None:
        """Record a slide that failed, with its reason (replaces any staged features of it)."""
        slide_id = record["slide_id"]
        self.staged_path(slide_id).unlink(missing_ok=True)
        atomic_write_bytes(self.error_path(slide_id), json.dumps(record, default=_jsonable).encode())

    def load_staged(self, slide_id: str, *, with_features: bool = True) -> StagedSlide:
        """Read one staged slide (features optional, for cheap record-only reads)."""
        with np.load(self.staged_path(slide_id)) as z:
            record = json.loads(z["record"].tobytes().decode())
            features = z["features"] if with_features else np.zeros((0, 0), np.float16)
            return StagedSlide(record, z["coords"], features, int(z["patch_size"]))

    def staged_records(self) -> Iterator[dict[str, Any]]:
        """Records of every staged slide, ok ones and failed ones, sorted by slide_id."""
        if not self.features.is_dir():
            return
        for path in sorted(self.features.iterdir()):
            if path.name.startswith("."):
                continue
            if path.name.endswith(".error.json"):
                yield json.loads(path.read_text())
            elif path.suffix == ".npz":
                yield self.load_staged(path.stem, with_features=False).record

    def unstage(self, slide_id: str) -> bool:
        """Delete everything staged for ``slide_id``; True when something was there."""
        found = False
        for path in (self.staged_path(slide_id), self.error_path(slide_id)):
            if path.exists():
                path.unlink()
                found = True
        return found

    def clean_temporaries(self) -> None:
        """Remove temporary files a killed run may have left behind."""
        for folder in (self.root, self.features):
            if folder.is_dir():
                for tmp in folder.glob(".*.tmp"):
                    tmp.unlink(missing_ok=True)


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
