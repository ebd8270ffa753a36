"""What makes an index what it is (``index.json``): one settings type, its JSON form, the compatibility check
and the per-slide settings fingerprint."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from indexer.aggregation.aggregate import AggregationConfig
from indexer.errors import IndexError_
from indexer.store.layout import SCHEMA_VERSION
from indexer.tiles.tiling import TilingConfig


@dataclass(frozen=True)
class IndexSettings:
    """Encoder, tiling, bank and aggregation of an index; fixed when the index is created.

    Attributes:
        encoder: the encoder's ``describe()`` (name, weights_sha256, dim, preprocess, checkpoint).
        tiling: patch grid settings.
        max_patches: per-slide patch sampling (None: all patches).
        bank: name, K, sha256 and source of the knowledge bank.
        aggregation: ProAlign parameters.
        features_imported: patch features came from TRIDENT/CLAM files instead of the encoder.
        max_index_memory: FAISS memory budget in bytes per segment index (None: the default).
        prototypes_sha256: digest of the prototype embeddings P (set when P is written).
        created: creation time (ISO 8601, UTC).
    """

    encoder: dict[str, Any]
    tiling: TilingConfig = TilingConfig()
    max_patches: int | None = None
    bank: dict[str, Any] = field(default_factory=dict)
    aggregation: AggregationConfig = AggregationConfig()
    features_imported: bool = False
    max_index_memory: int | None = None
    prototypes_sha256: str | None = None
    created: str | None = None

    @property
    def dim(self) -> int:
        return int(self.encoder["dim"])

    def to_json(self) -> dict[str, Any]:
        """The ``index.json`` content."""
        out = asdict(self)
        out["tiling"] = {**out["tiling"], "max_patches": self.max_patches}
        out.pop("max_patches")
        out["aggregation"] = {k: v for k, v in out["aggregation"].items() if k != "chunk"}
        return {"schema_version": SCHEMA_VERSION, **out}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "IndexSettings":
        """Inverse of :meth:`to_json`."""
        tiling = dict(data["tiling"])
        max_patches = tiling.pop("max_patches", None)
        return cls(
            encoder=data["encoder"], tiling=TilingConfig(**tiling), max_patches=max_patches, bank=data["bank"],
            aggregation=AggregationConfig(**data["aggregation"]), features_imported=data.get("features_imported", False),
            max_index_memory=data.get("max_index_memory"), prototypes_sha256=data.get("prototypes_sha256"),
            created=data.get("created"),
        )

    def stamped(self) -> "IndexSettings":
        """A copy with the creation time set to now (when unset)."""
        return self if self.created else replace(self, created=datetime.now(timezone.utc).isoformat(timespec="seconds"))

    def check_same(self, other: "IndexSettings", where: str) -> None:
        """Raise a one-line IndexError_ when ``other`` (a run's settings) would change what this index is."""
        old, new = self.encoder, other.encoder
        if (old["name"], old["weights_sha256"]) != (new["name"], new["weights_sha256"]):
            raise IndexError_(
                f"{where} was built with encoder {old['name']} (weights {old['weights_sha256'][:12]}); this run uses "
                f"{new['name']} (weights {new['weights_sha256'][:12]}). Use a new --out or the same --model")
        if self.bank.get("sha256") != other.bank.get("sha256"):
            raise IndexError_(f"{where} was built with bank {self.bank.get('name')!r}; this run uses "
                              f"{other.bank.get('name')!r} (or a changed file). Use a new --out or the same --bank")
        if (self.tiling, self.max_patches) != (other.tiling, other.max_patches):
            raise IndexError_(f"{where} was built with tiling {self.to_json()['tiling']}; this run asks for "
                              f"{other.to_json()['tiling']}. Use a new --out")
        if (self.aggregation.tau, self.aggregation.alpha) != (other.aggregation.tau, other.aggregation.alpha):
            raise IndexError_(f"{where} was built with aggregation tau={self.aggregation.tau}, alpha={self.aggregation.alpha}; "
                              f"this run asks for tau={other.aggregation.tau}, alpha={other.aggregation.alpha}. Use a new --out")
        if self.features_imported != other.features_imported:
            raise IndexError_(f"{where} was built {'from imported' if self.features_imported else 'without imported'} "
                              "features; use a new --out to mix them")

    def fingerprint(self, mpp_override: float | None) -> str:
        """Digest of everything that decides a slide's patch features: encoder weights, tiling, sampling,
        feature import and the MPP given for the slide (None when the file's own MPP is used)."""
        parts = {"encoder": [self.encoder["name"], self.encoder["weights_sha256"]], "tiling": asdict(self.tiling),
                 "max_patches": self.max_patches, "features_imported": self.features_imported,
                 "mpp_override": None if mpp_override is None else round(float(mpp_override), 9)}
        return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
