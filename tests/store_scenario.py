"""Writer operations on a small synthetic index, run in-process or as `python store_scenario.py OP ROOT` (the
crash tests SIGKILL that process at named points). Slides are staged from seeded synthetic features, so a
re-run produces the same bytes; each operation is idempotent the way `slidesearch` commands are."""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import numpy as np
import pyarrow as pa

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from indexer.store.identity import IndexSettings  # noqa: E402
from indexer.store.staging import StagedSlide  # noqa: E402
from indexer.store.writer import IndexWriter  # noqa: E402

DIM, K = 32, 4
BASE, ADDED, GROWN = ("A", "B", "C", "D", "E"), ("F", "G", "H"), ("I", "J", "K")
SETTINGS = IndexSettings(encoder={"name": "synthetic", "weights_sha256": "0" * 64, "dim": DIM},
                         bank={"name": "synthetic", "K": K, "sha256": "synthetic", "source": "synthetic"})


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


PROTOTYPES = unit(np.random.default_rng(0).standard_normal((K, DIM)))


def staged(slide_id: str) -> StagedSlide:
    """A slide of 20-60 patches around its own mixture of prototypes (deterministic per id)."""
    rng = np.random.default_rng(zlib.crc32(slide_id.encode()))
    n = int(rng.integers(20, 60))
    feats = unit(PROTOTYPES[rng.integers(K, size=n)] + 0.7 * rng.standard_normal((n, DIM)) / np.sqrt(DIM))
    coords = np.stack([np.arange(n) % 8 * 224, np.arange(n) // 8 * 224], axis=1)
    record = {"slide_id": slide_id, "path": f"/synthetic/{slide_id}.svs", "sha256": slide_id * 8, "size_bytes": n,
              "mtime_ns": 1, "vendor": "synthetic", "width": 2048, "height": 2048, "mpp": 0.5,
              "mpp_source": "synthetic", "magnification": 20.0, "status": "ok", "error": None,
              "fingerprint": SETTINGS.fingerprint(None), "mpp_override": None}
    return StagedSlide(record, coords, feats.astype(np.float16), 224)


def add(root: Path, slide_ids) -> None:
    """Stage the slides that are neither committed nor staged, then commit everything staged."""
    with IndexWriter(root, create=True) as writer:
        writer.set_identity(SETTINGS)
        for slide_id in slide_ids:
            if slide_id not in writer.live_slides and writer.staging.get(slide_id, with_features=False) is None:
                writer.staging.put(staged(slide_id))
        pending = list(writer.staging.slide_ids())
        if pending:
            names = [f"p{i}" for i in range(K)]
            table = pa.table({"proto_id": pa.array(range(K), pa.int32()), "name": names,
                              "descriptions": [[n] for n in names]})
            prototypes = writer.fix_prototypes(table, PROTOTYPES)
            writer.commit_slides(pending, [], [], prototypes)


def metadata(root: Path) -> None:
    with IndexWriter(root) as writer:
        writer.update_metadata(pa.table({"slide_id": ["A", "F", "Z"], "label": ["x", "y", "z"], "site": ["1", "2", "3"]}))


def remove(root: Path) -> None:
    with IndexWriter(root) as writer:
        if "B" in writer.live_slides:
            writer.remove(["B"])


def compact(root: Path) -> None:
    from indexer.store.compact import compact as run

    run(root)


def grow(root: Path) -> None:
    """Add three slides under a small quantizer plan: the collection (278 → 378 patches) outgrows exact search,
    so this commit trains the patches quantizer and back-fills the two earlier segments under it."""
    from indexer.store import quantizer

    plan, quantizer.PLAN = quantizer.PLAN, quantizer.QuantizerPlan(nlist=8, nprobe=8, names=("patches",), coarse="",
                                                                   exact_max=300)
    try:
        add(root, BASE + ADDED + GROWN)
    finally:
        quantizer.PLAN = plan


OPS = {"base": lambda r: add(r, BASE), "add": lambda r: add(r, BASE + ADDED), "metadata": metadata,
       "remove": remove, "compact": compact, "grow": grow}

if __name__ == "__main__":
    OPS[sys.argv[1]](Path(sys.argv[2]))
