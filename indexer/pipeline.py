"""Compose the stages (open → tissue → tile → embed → aggregate → write), resumably, one slide at a time."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from indexer.aggregate import AggregationConfig
from indexer.errors import IndexError_, UserError
from indexer.metadata import metadata_by_slide, read_metadata_csv, slide_mpp_override
from indexer.progress import StageProgress
from indexer.store import IndexDir, StagedSlide
from indexer.tiling import TilingConfig

REFINE_SAMPLE = 200_000
SLIDE_SUFFIXES = frozenset({
    ".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm",
    ".png", ".jpg", ".jpeg",
})


@dataclass(frozen=True)
class IndexConfig:
    """Everything that decides what an index contains (DESIGN §5 options)."""

    model: str = "tiny"
    checkpoint: str | None = None
    device: str = "auto"
    batch_size: int = 64
    num_workers: int = 2
    tiling: TilingConfig = TilingConfig()
    max_patches: int | None = None
    mpp: float | None = None
    bank: str = "general"
    aggregation: AggregationConfig = AggregationConfig()
    max_index_memory: int | None = None
    features_dir: str | None = None


@dataclass
class IndexReport:
    """Outcome of one `slidesearch index` run."""

    out: Path
    indexed: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    patches_encoded: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        """0 when every slide is indexed, 3 when some failed."""
        return 3 if self.failed else 0


def collect_slides(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (searched recursively) into slide files, sorted, without duplicates."""
    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if child.is_file() and child.suffix.lower() in SLIDE_SUFFIXES:
                    found[child.resolve()] = None
        elif path.exists():
            found[path.resolve()] = None
        else:
            raise UserError(f"{path}: no such file or directory")
    if not found:
        raise UserError("no slide files found in the given paths")
    paths = list(found)
    ids = defaultdict(list)
    for p in paths:
        ids[p.stem].append(p)
    dupes = {k: v for k, v in ids.items() if len(v) > 1}
    if dupes:
        name, where = next(iter(dupes.items()))
        raise UserError(f"slide id {name!r} is used by {len(where)} files ({where[0]}, {where[1]}); slide file names must be unique")
    return paths


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def run_index(
    inputs: Iterable[str | Path],
    out: str | Path,
    config: IndexConfig = IndexConfig(),
    metadata_csv: str | Path | None = None,
    show_progress: bool = True,
) -> IndexReport:
    """Index slides into ``out``; resumes and appends, skipping slides already indexed (same file hash).

    Args:
        inputs: slide files or directories.
        out: the index directory (created if missing).
        config: model, tiling, bank and index options.
        metadata_csv: optional CSV of user columns joined to slides by slide_id or file name.
        show_progress: draw rich progress bars on stderr.
    """
    from indexer.encoders import load_encoder
    from indexer.prototypes import embed_prototypes, load_bank

    paths = collect_slides(inputs)
    index = IndexDir(out)
    index.root.mkdir(parents=True, exist_ok=True)
    index.clean_temporaries()
    metadata = _update_metadata(index, metadata_csv)
    report = IndexReport(out=index.root)
    timings: dict[str, float] = defaultdict(float)

    t0 = time.perf_counter()
    encoder = load_encoder(config.model, checkpoint=config.checkpoint, device=config.device, batch_size=config.batch_size)
    bank = load_bank(config.bank)
    settings = _settings(config, encoder, bank)
    check_compatible(index, settings)
    text_prototypes = embed_prototypes(bank, encoder)
    timings["load model"] = time.perf_counter() - t0

    with StageProgress(enabled=show_progress) as progress:
        progress.start_slides(len(paths))
        for path in paths:
            progress.next_slide(path.stem)
            _index_one(index, path, config, encoder, metadata.get(path.stem), report, timings, progress)
            progress.slide_done()

    assembled = rebuild(index, text_prototypes, _prototype_table(bank, text_prototypes), settings, metadata, config)
    for stage, seconds in assembled.timings.items():
        timings[stage] += seconds
    report.timings = dict(timings)
    report.counts = assembled.counts
    return report


def _index_one(index, path, config, encoder, meta_row, report, timings, progress) -> None:
    """Index one slide into the staging area; a failure is recorded, never raised."""
    slide_id = path.stem
    if _already_indexed(index, path, slide_id):
        report.skipped.append(slide_id)
        return
    record = _file_record(path, slide_id)
    try:
        staged = _encode_slide(path, record, config, encoder, meta_row, timings, progress)
    except UserError as exc:
        _fail(index, report, record, str(exc))
        return
    except Exception as exc:  # one slide's failure never stops the run
        _fail(index, report, record, f"{type(exc).__name__}: {exc}")
        return
    t0 = time.perf_counter()
    index.stage_slide(staged)
    timings["stage"] += time.perf_counter() - t0
    report.indexed.append(slide_id)
    report.patches_encoded += len(staged.coords)


def _already_indexed(index: IndexDir, path: Path, slide_id: str) -> bool:
    """True when ``slide_id`` is staged from the same file content (cheap size+mtime check first)."""
    if not index.staged_path(slide_id).is_file():
        return False
    record = index.load_staged(slide_id, with_features=False).record
    stat = path.stat()
    if record.get("size_bytes") == stat.st_size and record.get("mtime_ns") == stat.st_mtime_ns:
        return True
    return record.get("sha256") == file_sha256(path)


def _file_record(path: Path, slide_id: str) -> dict[str, Any]:
    stat = path.stat()
    sha = file_sha256(path) if path.is_file() else None
    return {"slide_id": slide_id, "path": str(path), "sha256": sha, "size_bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _fail(index: IndexDir, report: IndexReport, record: dict[str, Any], reason: str) -> None:
    index.stage_error({**record, "status": "error", "error": reason, "n_patches": 0})
    report.failed[record["slide_id"]] = reason


def _encode_slide(path, record, config, encoder, meta_row, timings, progress) -> StagedSlide:
    """Open, detect tissue, tile and embed one slide (or import its features)."""
    from indexer.embedding import iter_slide_embeddings
    from indexer.slides import open_slide
    from indexer.tiling import tile_slide
    from indexer.tissue import detect_tissue

    mpp = config.mpp or slide_mpp_override(meta_row)
    t0 = time.perf_counter()
    with open_slide(path, mpp=mpp, require_mpp=config.features_dir is None) as slide:
        facts = slide.facts()
        record.update(
            vendor=slide.vendor, width=slide.dimensions[0], height=slide.dimensions[1], mpp=slide.mpp,
            mpp_source=slide.mpp_source, magnification=slide.magnification, status="ok", error=None,
        )
        timings["open"] += time.perf_counter() - t0
        if config.features_dir is not None:
            return _import_features(record, config, encoder, slide, timings)
        t0 = time.perf_counter()
        mask = detect_tissue(slide)
        timings["tissue"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        grid = tile_slide(slide, config.tiling, mask)
        grid = subsample_grid(grid, config.max_patches, seed=record["slide_id"])
        timings["tile"] += time.perf_counter() - t0
    if len(grid) == 0:
        raise UserError(f"no tissue found (0 patches at {config.tiling.magnification:g}x, min tissue {config.tiling.min_tissue})")
    record["level"] = grid.level
    t0 = time.perf_counter()
    progress.start_patches(len(grid))
    feats = np.zeros((len(grid), encoder.dim), np.float16)
    for rows, emb in iter_slide_embeddings(
        path, grid, encoder, mpp=facts["mpp"], batch_size=config.batch_size, num_workers=config.num_workers
    ):
        feats[rows] = emb
        progress.advance_patches(len(rows))
    timings["embed"] += time.perf_counter() - t0
    return StagedSlide(record, grid.coords, feats, grid.size)


def _import_features(record, config, encoder, slide, timings) -> StagedSlide:
    from indexer.features_import import find_features_file, read_features_h5

    t0 = time.perf_counter()
    coords, feats, size = read_features_h5(find_features_file(config.features_dir, record["slide_id"]), encoder.dim)
    if size is None:
        if slide.mpp is None:
            raise UserError("features file has no patch size and the slide has no MPP; pass --mpp")
        size = _patch_size(slide, config.tiling)
    timings["import features"] += time.perf_counter() - t0
    return StagedSlide(record, coords, feats.astype(np.float16), int(size))


def _patch_size(slide, tiling: TilingConfig) -> int:
    """Level-0 patch side for ``tiling`` on ``slide`` (DESIGN: patch_px at the target magnification)."""
    return int(round(tiling.patch_px * (10.0 / tiling.magnification) / slide.mpp))


def subsample_grid(grid, max_patches: int | None, seed: str):
    """Keep at most ``max_patches`` patches, a deterministic (per-slide) random subset in grid order."""
    import dataclasses

    if not max_patches or len(grid) <= max_patches:
        return grid
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:16], 16))
    keep = np.sort(rng.choice(len(grid), size=max_patches, replace=False))
    return dataclasses.replace(grid, coords=grid.coords[keep])


def _settings(config: IndexConfig, encoder, bank) -> dict[str, Any]:
    """The manifest sections that decide compatibility (encoder, tiling, bank) and aggregation."""
    return {
        "encoder": encoder.describe(),
        "tiling": {**asdict(config.tiling), "max_patches": config.max_patches},
        "bank": {"name": bank.name, "K": len(bank.prototypes), "sha256": bank.sha256},
        "aggregation": asdict(config.aggregation),
        "max_index_memory": config.max_index_memory,
        "features_imported": config.features_dir is not None,
    }


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


def _prototype_table(bank, text_prototypes: np.ndarray):
    import pyarrow as pa

    dim = text_prototypes.shape[1]
    return pa.table({
        "proto_id": pa.array(range(len(bank.prototypes)), pa.int32()),
        "name": [p.name for p in bank.prototypes],
        "organs": [list(p.organs) for p in bank.prototypes],
        "descriptions": [list(p.descriptions) for p in bank.prototypes],
        "text_embedding": pa.FixedSizeListArray.from_arrays(pa.array(text_prototypes.astype(np.float32).ravel()), dim),
    })


def _update_metadata(index: IndexDir, metadata_csv) -> dict[str, dict[str, Any]]:
    """Store a newly given metadata CSV in the index; otherwise reuse the one stored before."""
    import pyarrow.parquet as pq

    from indexer.store import atomic_path

    path = index.root / "metadata.parquet"
    if metadata_csv is not None:
        table = read_metadata_csv(metadata_csv)
        with atomic_path(path) as tmp:
            pq.write_table(table, tmp)
        return metadata_by_slide(table)
    return metadata_by_slide(pq.read_table(path)) if path.is_file() else {}


def rebuild(index: IndexDir, text_prototypes, prototype_table, settings, metadata, config: IndexConfig):
    """Re-aggregate every staged slide and rewrite tables, FAISS indexes and the manifest."""
    from indexer.assemble import assemble, assign_slide_rows, previous_slide_rows

    records = assign_slide_rows(list(index.staged_records()), previous_slide_rows(index))
    prototypes = _refined_prototypes(index, records, text_prototypes, config.aggregation)
    assembled = assemble(index, records, prototypes, prototype_table, config.aggregation, metadata, config.max_index_memory)
    index.write_manifest({
        **({"created": index.read_manifest()["created"]} if index.exists() else {}),
        **settings,
        "counts": assembled.counts,
        "indexes": assembled.indexes,
        "timings": assembled.timings,
    })
    return assembled


def _refined_prototypes(index: IndexDir, records, text_prototypes: np.ndarray, aggregation: AggregationConfig) -> np.ndarray:
    """Prototype embeddings P: the text prototypes, refined on the collection when alpha < 1 (DESIGN §3)."""
    if aggregation.alpha >= 1.0:
        return text_prototypes
    from indexer.prototypes import refine_prototypes

    ok = [r["slide_id"] for r in records if r.get("status") == "ok"]
    if not ok:
        return text_prototypes
    # An even share of at most REFINE_SAMPLE patches per slide keeps memory flat on large collections.
    per_slide = max(1, REFINE_SAMPLE // len(ok))
    feats = [_evenly_spaced(index.load_staged(slide_id).features, per_slide) for slide_id in ok]
    return refine_prototypes(text_prototypes, np.concatenate(feats).astype(np.float32), aggregation.alpha, aggregation.tau)


def _evenly_spaced(rows: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` rows spread evenly over ``rows``."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).astype(np.int64)]


def remove_slides(out: str | Path, slide_ids: Iterable[str]) -> IndexReport:
    """Delete slides from an index and rewrite it (no encoder needed: prototypes are stored)."""
    import dataclasses

    import pyarrow.parquet as pq

    index = IndexDir(out)
    manifest = index.read_manifest()
    missing = [s for s in slide_ids if not (index.staged_path(s).exists() or index.error_path(s).exists())]
    if missing:
        raise UserError(f"not in {index.root}: {', '.join(missing)}")
    for slide_id in slide_ids:
        index.unstage(slide_id)
    table = pq.read_table(index.table("prototypes"))
    text_prototypes = np.asarray(table.column("text_embedding").to_pylist(), np.float32)
    settings = {k: manifest[k] for k in ("encoder", "tiling", "bank", "aggregation", "max_index_memory", "features_imported")}
    config = dataclasses.replace(
        IndexConfig(), aggregation=AggregationConfig(**manifest["aggregation"]), max_index_memory=manifest["max_index_memory"]
    )
    metadata = _update_metadata(index, None)
    assembled = rebuild(index, text_prototypes, table, settings, metadata, config)
    return IndexReport(out=index.root, counts=assembled.counts, timings=assembled.timings)
