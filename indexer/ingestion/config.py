"""What one `slidesearch index` run is asked (IndexConfig) and what it reports (IndexReport)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from indexer.aggregation.aggregate import AggregationConfig
from indexer.store.identity import IndexSettings
from indexer.tiles.tiling import TilingConfig


@dataclass(frozen=True)
class IndexConfig:
    """Options of one `slidesearch index` run (DESIGN §5); :class:`IndexSettings` is what the index keeps.

    ``model`` has no default: :func:`run_index` refuses to run without one (``tiny`` has random weights, so an
    index built by it silently would answer text queries arbitrarily).
    """

    model: str | None = None
    checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 64
    num_workers: int | None = None  # reader processes; None: one per core (indexer.ingestion.readers.resolve_workers)
    tiling: TilingConfig = TilingConfig()
    max_patches: int | None = None
    mpp: float | None = None
    bank: str = "general"
    aggregation: AggregationConfig = AggregationConfig()
    max_index_memory: int | None = None
    features_dir: str | None = None
    wait: bool = False
    commit_every: int | None = None
    slide_features_dir: str | None = None  # TRIDENT slide-encoder .h5 files (indexer/aggregation/slide_features.py)
    slide_encoder: str | None = None  # the slide space they fill
    commit_minutes: float | None = None
    engine: str = "local"
    address: str | None = None
    actors: int | None = None


@dataclass
class IndexReport:
    """Outcome of one `slidesearch index` run."""

    out: Path
    indexed: list[str] = field(default_factory=list)
    resumed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    patches_encoded: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    version: int = 0
    devices: dict[str, str] = field(default_factory=dict)  # where the encoder and FAISS ran

    @property
    def exit_code(self) -> int:
        """0 when every slide is indexed, 3 when some failed."""
        return 3 if self.failed else 0


def settings_for(config: IndexConfig, encoder, bank) -> IndexSettings:
    """The index settings a run with ``config`` asks for."""
    from indexer.aggregation.bank import list_banks

    source = config.bank if config.bank in list_banks() else str(Path(config.bank).expanduser().resolve())
    return IndexSettings(
        encoder=encoder.describe(), tiling=config.tiling, max_patches=config.max_patches,
        bank={"name": bank.name, "K": len(bank.prototypes), "sha256": bank.sha256, "source": source},
        aggregation=config.aggregation, features_imported=config.features_dir is not None,
        max_index_memory=config.max_index_memory,
    )


def check_model_named(model: str | None) -> None:
    """Refuse a run that names no encoder, listing the registered ones.

    Raises:
        ModelError: ``model`` is None or empty.
    """
    if not model:
        from indexer.models.encoders import known_names
        from indexer.errors import ModelError

        raise ModelError(f"name the encoder with --model (known: {', '.join(known_names())}; `slidesearch models` "
                         "says which have weights here; tiny has random weights, for tests and the demo)")
