"""Where each part of a version 2 index directory lives (DESIGN §4)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

SCHEMA_VERSION = 2
FAISS_NAMES = ("slides", "slides_mean", "subvectors", "patches")


@dataclass(frozen=True)
class IndexPaths:
    """Paths of one index directory."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def identity(self) -> Path:
        return self.root / "index.json"

    @property
    def prototypes(self) -> Path:
        return self.root / "prototypes.parquet"

    @property
    def current(self) -> Path:
        return self.root / "CURRENT"

    @property
    def versions(self) -> Path:
        return self.root / "versions"

    @property
    def segments(self) -> Path:
        return self.root / "segments"

    @property
    def quantizers(self) -> Path:
        return self.root / "quantizers"

    @property
    def codes(self) -> Path:
        """Codes of segments written before their quantizer, encoded under it later (``codes/vNNNNNN-…``)."""
        return self.root / "codes"

    @property
    def metadata(self) -> Path:
        return self.root / "metadata"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def tombstones(self) -> Path:
        return self.root / "tombstones"

    @property
    def lock(self) -> Path:
        return self.root / "LOCK"

    @property
    def staging(self) -> Path:
        return self.root / "staging"

    @property
    def legacy_manifest(self) -> Path:
        """The manifest of a version 1 index."""
        return self.root / "manifest.json"

    def version(self, number: int) -> Path:
        return self.versions / version_name(number)

    def segment(self, segment_id: str) -> Path:
        return self.segments / segment_id

    def folders(self) -> tuple[Path, ...]:
        """Every folder a writer may leave temporaries in."""
        return (self.root, self.versions, self.segments, self.metadata, self.tombstones, self.staging, self.quantizers,
                self.reports, self.codes)


def version_name(number: int) -> str:
    """``v000012.json`` for version 12.

    >>> version_name(12)
    'v000012.json'
    """
    return f"v{number:06d}.json"


def segment_name(number: int) -> str:
    """``s000003`` for the third segment ever written.

    >>> segment_name(3)
    's000003'
    """
    return f"s{number:06d}"
