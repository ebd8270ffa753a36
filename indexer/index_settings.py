"""What makes an index what it is (encoder, tiling, bank, aggregation) and the check that a run matches it."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.errors import IndexError_
from indexer.store import IndexDir

if TYPE_CHECKING:
    from indexer.pipeline import IndexConfig


def index_settings(config: "IndexConfig", encoder, bank) -> dict[str, Any]:
    """The manifest sections that decide compatibility (encoder, tiling, bank) and aggregation."""
    return {
        "encoder": encoder.describe(),
        "tiling": {**asdict(config.tiling), "max_patches": config.max_patches},
        "bank": {"name": bank.name, "K": len(bank.prototypes), "sha256": bank.sha256, "source": bank_source(config.bank)},
        "aggregation": asdict(config.aggregation),
        "max_index_memory": config.max_index_memory,
        "features_imported": config.features_dir is not None,
    }


def bank_source(bank: str) -> str:
    """A shipped bank's name, or the absolute path of a user's bank file (so queries can reload it)."""
    from indexer.bank import list_banks

    return bank if bank in list_banks() else str(Path(bank).expanduser().resolve())


def check_compatible(index: IndexDir, settings: dict[str, Any]) -> None:
    """Refuse to add to an index built with another encoder, bank or tiling."""
    if not index.exists():
        return
    old = index.read_manifest()
    enc_old, enc_new = old["encoder"], settings["encoder"]
    if (enc_old["name"], enc_old["weights_sha256"]) != (enc_new["name"], enc_new["weights_sha256"]):
        raise IndexError_(
            f"{index.root} was built with encoder {enc_old['name']} (weights {enc_old['weights_sha256'][:12]}); "
            f"this run uses {enc_new['name']} (weights {enc_new['weights_sha256'][:12]}). Use a new --out or the same --model"
        )
    if old["bank"]["sha256"] != settings["bank"]["sha256"]:
        raise IndexError_(f"{index.root} was built with bank {old['bank']['name']!r}; this run uses {settings['bank']['name']!r} (or a changed file). Use a new --out or the same --bank")
    if old["tiling"] != settings["tiling"]:
        raise IndexError_(f"{index.root} was built with tiling {old['tiling']}; this run asks for {settings['tiling']}. Use a new --out")


def prototype_table(bank, text_prototypes: np.ndarray):
    import pyarrow as pa

    dim = text_prototypes.shape[1]
    return pa.table({
        "proto_id": pa.array(range(len(bank.prototypes)), pa.int32()),
        "name": [p.name for p in bank.prototypes],
        "organs": [list(p.organs) for p in bank.prototypes],
        "descriptions": [list(p.descriptions) for p in bank.prototypes],
        "text_embedding": pa.FixedSizeListArray.from_arrays(pa.array(text_prototypes.astype(np.float32).ravel()), dim),
    })
