"""Compose the stages (open → tissue → tile → embed → aggregate → write), resumably, one slide at a time."""

from __future__ import annotations

import hashlib
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from indexer.aggregate import AggregationConfig
from indexer.assemble import rebuild
from indexer.encoders import file_sha256
from indexer.errors import UserError
from indexer.index_settings import check_compatible, index_settings, prototype_table
from indexer.metadata import read_metadata_csv, slide_mpp_override, stored_metadata
from indexer.progress import StageProgress
from indexer.store import IndexDir, StagedSlide
from indexer.tiling import TilingConfig

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
    from indexer.bank import load_bank
    from indexer.encoders import load_encoder
    from indexer.prototypes import embed_prototypes

    # Every check comes before the first write: a refused run leaves the index as it was.
    paths = collect_slides(inputs)
    new_metadata = read_metadata_csv(metadata_csv) if metadata_csv is not None else None
    index = IndexDir(out)
    timings: dict[str, float] = defaultdict(float)
    t0 = time.perf_counter()
    encoder = load_encoder(config.model, checkpoint=config.checkpoint, device=config.device, batch_size=config.batch_size)
    bank = load_bank(config.bank)
    settings = index_settings(config, encoder, bank)
    check_compatible(index, settings)
    text_prototypes = embed_prototypes(bank, encoder)
    timings["load model"] = time.perf_counter() - t0

    index.root.mkdir(parents=True, exist_ok=True)
    index.clean_temporaries()
    metadata = stored_metadata(index.root, new_metadata)
    report = IndexReport(out=index.root)

    with StageProgress(enabled=show_progress) as progress:
        progress.start_slides(len(paths))
        for path in paths:
            progress.next_slide(path.stem)
            _index_one(index, path, config, encoder, metadata.get(path.stem), report, timings, progress)
            progress.slide_done()

    assembled = rebuild(index, text_prototypes, prototype_table(bank, text_prototypes), settings, metadata,
                        config.aggregation, config.max_index_memory, run_timings=timings)
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
        staged = encode_slide(path, record, config, encoder, meta_row, timings, progress)
    except UserError as exc:
        _fail(index, report, record, str(exc))
        return
    except (ImportError, MemoryError):
        raise  # a broken installation or machine is not a property of this slide
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


def encode_slide(path, record, config, encoder, meta_row=None, timings=None, progress=None) -> StagedSlide:
    """Open, detect tissue, tile and embed one slide (or import its features).

    Args:
        path: the slide file.
        record: dict with at least ``slide_id``; slide facts are added to it.
        config: tiling, sampling and loader options.
        encoder: the image encoder.
        meta_row: the slide's user metadata (for a per-slide ``mpp``).
        timings: stage → seconds, accumulated in place.
        progress: progress bars.

    Raises:
        UserError: unreadable slide, no MPP, or no tissue.
    """
    timings = timings if timings is not None else defaultdict(float)
    progress = progress or StageProgress(enabled=False)
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
    # Starting reader processes costs more than reading a couple of batches in-process.
    workers = config.num_workers if len(grid) > 2 * config.batch_size else 0
    for rows, emb in iter_slide_embeddings(
        path, grid, encoder, mpp=facts["mpp"], batch_size=config.batch_size, num_workers=workers
    ):
        feats[rows] = emb
        progress.advance_patches(len(rows))
    timings["embed"] += time.perf_counter() - t0
    return StagedSlide(record, grid.coords, feats, grid.size)


def _import_features(record, config, encoder, slide, timings) -> StagedSlide:
    from indexer.features_import import find_features_file, read_features_h5
    from indexer.tiling import patch_geometry

    t0 = time.perf_counter()
    coords, feats, size = read_features_h5(find_features_file(config.features_dir, record["slide_id"]), encoder.dim)
    if size is None:
        if slide.mpp is None:
            raise UserError("features file has no patch size and the slide has no MPP; pass --mpp")
        size = patch_geometry(slide, config.tiling)[0]
    timings["import features"] += time.perf_counter() - t0
    return StagedSlide(record, coords, feats.astype(np.float16), int(size))


def subsample_grid(grid, max_patches: int | None, seed: str):
    """Keep at most ``max_patches`` patches, a deterministic (per-slide) random subset in grid order."""
    import dataclasses

    if not max_patches or len(grid) <= max_patches:
        return grid
    rng = np.random.default_rng(int(hashlib.sha256(seed.encode()).hexdigest()[:16], 16))
    keep = np.sort(rng.choice(len(grid), size=max_patches, replace=False))
    return dataclasses.replace(grid, coords=grid.coords[keep])
