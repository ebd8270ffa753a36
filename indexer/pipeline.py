"""Compose the stages (open → tissue → tile → embed → stage → commit), resumably, one slide at a time.

Each slide is encoded into ``staging/``; a commit aggregates the staged slides against the fixed prototypes
P into one new segment and publishes a version (DESIGN §4), so a run costs O(its slides), memory stays at
one slide plus one batch, and a killed run resumes from its staged slides.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from indexer.aggregation.aggregate import AggregationConfig
from indexer.slides.sources import list_sources, source_facts
from indexer.ingestion.encode import file_facts
from indexer.models.encoders import file_sha256
from indexer.engines.job import EncodeJob, SlideOutcome
from indexer.errors import UserError
from indexer.ingestion.metadata import mpp_overrides, read_metadata_csv, unmatched_summary
from indexer.progress import StageProgress
from indexer.reports.commit import commit_metadata, report_source
from indexer.slides.ids import SLIDE_SUFFIXES, check_slide_id
from indexer.slides import slide_id as slide_id_of
from indexer.store.identity import IndexSettings
from indexer.store.writer import IndexWriter
from indexer.tiles.tiling import TilingConfig

SEGMENT_MAX_PATCHES = 2_000_000  # a run commits a segment at least this often (bounds a segment's FAISS build)
REFINE_SAMPLE = 200_000  # patches (spread over slides) used to refine prototypes


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


def prototype_table(bank, text_prototypes: np.ndarray):
    """prototypes.parquet without its embedding column: id, name, organs, descriptions, text embedding T."""
    import pyarrow as pa

    return pa.table({
        "proto_id": pa.array(range(len(bank.prototypes)), pa.int32()),
        "name": [p.name for p in bank.prototypes],
        "organs": [list(p.organs) for p in bank.prototypes],
        "descriptions": [list(p.descriptions) for p in bank.prototypes],
        "text_embedding": pa.FixedSizeListArray.from_arrays(
            pa.array(text_prototypes.astype(np.float32).ravel()), text_prototypes.shape[1]),
    })


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


def collect_slides(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (searched recursively) into slide inputs, sorted, without duplicates.

    A folder holding DICOM files (``.dcm``, or no suffix and the DICOM preamble) is one DICOM-WSI slide,
    as is a ``.dcm`` file given by name (its folder is the slide); its slide id is the folder's name.
    """
    from indexer.slides.dicom import dicom_folder, is_dicom_file

    found: dict[Path, None] = {}
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                if not child.is_file():
                    continue
                if is_dicom_file(child):
                    found[child.parent.resolve()] = None
                elif child.suffix.lower() in SLIDE_SUFFIXES:
                    found[child.resolve()] = None
        elif path.exists():
            found[(dicom_folder(path) or path).resolve()] = None
        else:
            raise UserError(f"{path}: no such file or directory")
    if not found:
        raise UserError("no slide files found in the given paths")
    paths = list(found)
    ids = defaultdict(list)
    for p in paths:
        ids[slide_id_of(p)].append(p)
    dupes = {k: v for k, v in ids.items() if len(v) > 1}
    if dupes:
        name, where = next(iter(dupes.items()))
        raise UserError(f"slide id {name!r} is used by {len(where)} files ({where[0]}, {where[1]}); slide file names must be unique")
    return paths


def run_index(
    inputs: Iterable[str | Path],
    out: str | Path,
    config: IndexConfig,
    metadata_csv: str | Path | None = None,
    show_progress: bool = True,
    reports: str | None = None,
    report_model: str | None = None,
) -> IndexReport:
    """Index slides into ``out``: new and changed slides are encoded and committed as a new segment; slides
    already committed with the same file and settings are skipped; staged work of a killed run is resumed.

    Args:
        inputs: slide files or directories, or DICOMweb URLs (``indexer.slides.sources``).
        out: the index directory (created if missing).
        config: model, tiling, bank and index options.
        metadata_csv: optional CSV of user columns, merged into the stored metadata.
        show_progress: draw rich progress bars on stderr.
        reports: a folder of ``<slide_id>.txt`` reports, or the metadata column holding them (indexed for
            report search: ``indexer/reports/``).
        report_model: a sentence-transformers folder for the reports (default: all-MiniLM-L6-v2).
    """
    from indexer.aggregation.bank import load_bank
    from indexer.models.devices import encoder_label
    from indexer.engines import open_engine
    from indexer.vectors.device import faiss_label
    from indexer.store.compact import auto_merge, vacuum

    # Every check comes before the first write: a refused run leaves the index as it was.
    check_model_named(config.model)
    faiss_label()  # a FAISS device asked for (or present) but unusable is refused before any work
    slides, notes = list_sources(inputs, lambda files: [(check_slide_id(slide_id_of(p)), p)
                                                        for p in collect_slides(files)])
    new_metadata = read_metadata_csv(metadata_csv) if metadata_csv is not None else None
    report_table, report_config = report_source(reports, new_metadata, report_model)
    timings: dict[str, float] = defaultdict(float)
    report = IndexReport(out=Path(out), notes=notes)
    bank = load_bank(config.bank)
    with open_engine(config, out, report) as engine:
        t0 = time.perf_counter()
        encoder, text_prototypes = engine.load(bank)
        timings["load model"] = time.perf_counter() - t0
        report.devices = {"encoder": encoder_label(encoder), "faiss": faiss_label()}
        with IndexWriter(out, wait=config.wait, create=True) as writer:
            settings = writer.set_identity(settings_for(config, encoder, bank))
            if new_metadata is not None or report_table is not None or report_config is not None:
                commit_metadata(writer, new_metadata, report_table, report_config)
            with StageProgress(enabled=show_progress) as progress:
                run = _Run(writer, config, settings, report, timings, prototype_table(bank, text_prototypes),
                           text_prototypes, progress, report.devices)
                progress.start_slides(len(slides))
                engine.index(run, slides)
            run.adopt_leftovers({s for s, _ in slides})
            run.commit()
            if auto_merge(writer):
                vacuum(writer.paths, writer.version)  # merged-away segments, unless an open searcher still reads them
            report.counts, report.version = dict(writer.version.counts), writer.version.number
            if new_metadata is not None:
                report.notes.append(unmatched_summary(new_metadata, writer.live_slides))
            if report_table is not None:
                report.notes.append(unmatched_summary(report_table, writer.live_slides).replace("metadata:", "reports:", 1))
    report.timings = dict(timings)
    return report


class _Run:
    """The slides of one run waiting for their commit, and the rules that decide each slide's fate.

    Every engine shares these rules: :meth:`jobs` skips, refuses or resumes each slide and yields the ones to
    encode; the engine encodes them (anywhere) and hands each outcome to :meth:`accept`, in any order.
    """

    def __init__(self, writer: IndexWriter, config: IndexConfig, settings: IndexSettings, report: IndexReport,
                 timings: dict[str, float], proto_table, text_prototypes: np.ndarray,
                 progress: StageProgress | None = None, devices: dict[str, str] | None = None):
        self.writer, self.config, self.settings = writer, config, settings
        self.devices = devices or {}
        self.report, self.timings = report, timings
        self.proto_table, self.text_prototypes = proto_table, text_prototypes
        self.progress = progress or StageProgress(enabled=False)
        self.overrides = mpp_overrides(writer.metadata)
        self.ok: list[str] = []
        self.failed: list[dict[str, Any]] = []
        self.replaced: list[str] = []
        self.pending_patches = 0
        self.last_commit = time.monotonic()

    def jobs(self, slides: Iterable[tuple[str, Path]]) -> Iterator[EncodeJob]:
        """The slides to encode, in order; skipped, refused and resumed ones are settled on the way."""
        for slide_id, path in slides:
            self.progress.next_slide(slide_id)
            job = self._plan(slide_id, path)
            if job is None:
                self._settled()
            else:
                yield job

    def accept(self, job: EncodeJob, outcome: SlideOutcome) -> None:
        """Record what encoding ``job`` gave: a staged slide waiting for its commit, or a failure."""
        for stage, seconds in outcome.timings.items():
            self.timings[stage] += seconds
        if outcome.error is not None:
            self._fail(outcome.record, outcome.error, job.live)
        else:
            self.report.indexed.append(job.slide_id)
            self.report.patches_encoded += outcome.n_patches
            self._pending_ok(job.slide_id, outcome.n_patches, job.live)
        self._settled()

    def _settled(self) -> None:
        self.progress.slide_done()
        self.commit_if_due()

    def _plan(self, slide_id: str, path: Path) -> EncodeJob | None:
        """Skip, refuse or resume one slide (None), or the job that encodes it; a failure is recorded, never raised."""
        mpp = self.config.mpp or self.overrides.get(slide_id)
        fingerprint = self.settings.fingerprint(mpp)
        facts = {"slide_id": slide_id, "path": str(path), **source_facts(path, file_facts), "fingerprint": fingerprint,
                 "mpp_override": mpp}
        live = self.writer.live_slides.get(slide_id)
        same_file = live is not None and _same_file(live, facts, path)
        if live is not None and live["status"] == "ok":
            if same_file and live["fingerprint"] == fingerprint:
                self.report.skipped.append(slide_id)
                return None
            if not same_file and live["path"] != str(path):
                self.report.failed[slide_id] = (f"slide id {slide_id!r} is already indexed from {live['path']}; "
                                                "remove it first (`slidesearch remove`) or rename this file")
                return None
        staged = self.writer.staging.get(slide_id, with_features=False)
        if staged is not None:
            if staged.record.get("fingerprint") == fingerprint and _same_file(staged.record, facts, path):
                self._pending_ok(slide_id, staged.record["n_patches"], live)
                self.report.resumed.append(slide_id)
                return None
            self.writer.staging.remove(slide_id)
            self.report.notes.append(f"{slide_id}: staged with other settings or another file; encoded again")
        return EncodeJob(slide_id, str(path), facts, mpp, live)

    def _pending_ok(self, slide_id: str, n_patches: int, live: dict[str, Any] | None) -> None:
        self.ok.append(slide_id)
        self.pending_patches += int(n_patches)
        if live is not None:
            self.replaced.append(slide_id)

    def _fail(self, record: dict[str, Any], reason: str, live: dict[str, Any] | None) -> None:
        """Report a failed slide; record it in the index unless that would lose committed data or repeat itself."""
        self.report.failed[record["slide_id"]] = reason
        if live is not None and (live["status"] == "ok" or (live["error"] == reason and live["sha256"] == record["sha256"])):
            return  # a slide that indexed fine keeps its committed data; the same failure is not recorded twice
        self.failed.append({**record, "status": "error", "error": reason})
        if live is not None:
            self.replaced.append(record["slide_id"])

    def adopt_leftovers(self, seen: set[str]) -> None:
        """Commit slides an interrupted earlier run staged but this run was not given, when still valid."""
        for slide_id in list(self.writer.staging.slide_ids()):
            if slide_id in seen:
                continue
            staged = self.writer.staging.get(slide_id, with_features=False)
            record = staged.record if staged else {}
            if record.get("fingerprint") == self.settings.fingerprint(record.get("mpp_override")):
                live = self.writer.live_slides.get(slide_id)
                if live is None or live.get("sha256") != record.get("sha256") or live["fingerprint"] != record["fingerprint"]:
                    self._pending_ok(slide_id, record["n_patches"], live)
                    self.report.resumed.append(slide_id)
                    continue
            self.writer.staging.remove(slide_id)

    def commit_if_due(self) -> None:
        """Commit when ``commit_every`` slides or SEGMENT_MAX_PATCHES patches are waiting, or when slides have
        waited ``commit_minutes`` since the last commit."""
        every, minutes, waiting = self.config.commit_every, self.config.commit_minutes, len(self.ok) + len(self.failed)
        if ((every and waiting >= every) or self.pending_patches >= SEGMENT_MAX_PATCHES
                or (minutes and waiting and time.monotonic() - self.last_commit >= 60 * minutes)):
            self.commit()

    def commit(self) -> None:
        """Aggregate the waiting slides into one segment and publish a version."""
        if not (self.ok or self.failed):
            return
        t0 = time.perf_counter()
        prototypes = self.writer.fix_prototypes(self.proto_table, self._prototypes())
        self.timings["prototypes"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        version = self.writer.commit_slides(self.ok, self.failed, self.replaced, prototypes, self.timings,
                                            devices=self.devices)
        self.timings["commit"] += time.perf_counter() - t0
        for stage in ("aggregate", "tables", "faiss"):
            self.timings[stage] += version.timings.get(stage, 0.0)
        self.ok, self.failed, self.replaced, self.pending_patches = [], [], [], 0
        self.last_commit = time.monotonic()

    def _prototypes(self) -> np.ndarray:
        """P for the first commit: the text prototypes, refined on this run's slides when alpha < 1 (DESIGN §3)."""
        alpha, tau = self.settings.aggregation.alpha, self.settings.aggregation.tau
        if alpha >= 1.0 or not self.ok or self.writer.version.number > 0:
            return self.text_prototypes
        from indexer.aggregation.prototypes import refine_prototypes

        per_slide = max(1, REFINE_SAMPLE // len(self.ok))  # an even share keeps memory flat on large collections
        feats = [_evenly_spaced(self.writer.staging.get(s).features, per_slide) for s in self.ok]
        return refine_prototypes(self.text_prototypes, np.concatenate(feats).astype(np.float32), alpha, tau)


def _same_file(record: dict[str, Any], facts: dict[str, Any], path: Path) -> bool:
    """Same content as recorded: equal size and mtime, else equal sha256 (known up front for a DICOMweb series)."""
    if facts.get("sha256") is not None:
        return record.get("sha256") == facts["sha256"]
    if (record.get("size_bytes"), record.get("mtime_ns")) == (facts["size_bytes"], facts["mtime_ns"]):
        return True
    if record.get("size_bytes") != facts["size_bytes"]:
        return False
    facts.setdefault("sha256", file_sha256(path))
    return record.get("sha256") == facts["sha256"]


def _evenly_spaced(rows: np.ndarray, n: int) -> np.ndarray:
    """At most ``n`` rows spread evenly over ``rows``."""
    if len(rows) <= n:
        return rows
    return rows[np.linspace(0, len(rows) - 1, n).astype(np.int64)]
