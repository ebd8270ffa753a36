"""End-to-end demo: a labelled synthetic cohort → `tiny` index with its reports → text, slide and patch queries →
retrieval benchmark.

The image encoder (`tiny`) has random weights; the cohort's `report` column is indexed with the real report model
(all-MiniLM-L6-v2, and BM25), so a text query finds the slides whose reports say it. Everything goes under one
output folder and is reused on a re-run: the cohort is kept when its settings match (``demo.json``) and the index
pipeline skips slides it has already indexed.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from indexer.errors import UserError

REAL_WEIGHTS_COMMAND = ("slidesearch index SLIDES --out INDEX --model conch "
                        "--checkpoint /path/to/conch/pytorch_model.bin --metadata metadata.csv --reports report")
COHORT_FIELDS = ("patients", "slides_per_patient", "size", "mpp", "seed")


@dataclass(frozen=True)
class DemoConfig:
    """What the demo builds and asks.

    The default cohort (24 patients × 2 slides, 2048² px at 0.5 µm/px, i.e. ~1 mm² of tissue area and
    ~40 patches of 224 px at 20x per slide) indexes in about a minute on 2 CPU cores.
    """

    patients: int = 24
    slides_per_patient: int = 2
    size: int = 2048
    mpp: float = 0.5
    seed: int = 0
    model: str = "tiny"
    reports: str = "report"  # the metadata column of report text, indexed for text search
    k: int = 5
    text_query: str = "poorly differentiated adenocarcinoma with necrosis"
    label: str = "label"
    exclude_same: str = "patient_id"
    ks: tuple[int, ...] = (1, 5, 10)
    thumbnails_per_query: int = 3
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.patients < 2 or self.slides_per_patient < 1:
            raise UserError("the demo needs at least 2 patients and 1 slide per patient")
        if self.size < 512:
            raise UserError(f"--size {self.size}: slides must be at least 512 px wide")


@dataclass
class DemoResult:
    """Paths and outcomes of one demo run."""

    out: Path
    config: DemoConfig
    cohort_csv: Path
    cohort_reused: bool
    index: Path
    index_report: Any  # indexer.ingestion.config.IndexReport
    queries: dict[str, Any] = field(default_factory=dict)  # kind → SearchResult
    query_notes: dict[str, str] = field(default_factory=dict)  # kind → what the query slide/region is
    thumbnails: dict[str, list[Path]] = field(default_factory=dict)
    bench: dict[str, Any] = field(default_factory=dict)
    bench_files: dict[str, Path] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)


def run_demo(out: str | Path, config: DemoConfig = DemoConfig(), show_progress: bool = True,
             on_step: Callable[[str], None] | None = None) -> DemoResult:
    """Build (or reuse) the demo cohort and index under ``out``, query it and benchmark retrieval.

    Args:
        out: the demo folder (``cohort/``, ``index/``, ``thumbnails/``, ``bench/``, ``demo.json``).
        config: cohort size, model and query settings.
        show_progress: draw the indexing progress bars.
        on_step: called with a short description before each step.

    Raises:
        UserError: ``out`` holds a demo made with other cohort settings, or a step's input is bad.
    """
    from indexer.ingestion.run import IndexConfig, run_index
    from retrieval.evaluation.bench_retrieval import MODES, run_retrieval_benchmark, write_retrieval_report

    step = on_step or (lambda _: None)
    out = Path(out)
    timings: dict[str, float] = {}
    start = time.perf_counter()
    step("synthetic cohort")
    csv, reused = prepare_cohort(out, config)
    timings["cohort"] = time.perf_counter() - start

    t0 = time.perf_counter()
    step(f"indexing with {config.model}")
    index = out / "index"
    report = run_index([csv.parent], index, IndexConfig(model=config.model, num_workers=config.num_workers),
                       metadata_csv=csv, show_progress=show_progress, reports=config.reports)
    if report.failed:
        slide_id, reason = next(iter(report.failed.items()))
        raise UserError(f"{len(report.failed)} demo slide(s) failed to index, e.g. {slide_id}: {reason}")
    timings["index"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    step("text, slide and patch queries")
    queries, notes, thumbnails = run_queries(index, out / "thumbnails", config)
    timings["queries"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    step("retrieval benchmark (proto, mean, patch-vote)")
    bench = run_retrieval_benchmark(index, config.label, config.ks, config.exclude_same, MODES)
    command = (f"slidesearch bench retrieval {index} --label {config.label} --k {','.join(map(str, config.ks))} "
               f"--exclude-same {config.exclude_same} --out {out / 'bench'}")
    files = write_retrieval_report(bench, out / "bench", command=command)
    timings["benchmark"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - start
    return DemoResult(out, config, csv, reused, index, report, queries, notes, thumbnails, bench, files, timings)


def prepare_cohort(out: Path, config: DemoConfig) -> tuple[Path, bool]:
    """The cohort's metadata.csv under ``out/cohort``, written unless an identical one is complete there."""
    from retrieval.demo.synthetic import DIAGNOSES, write_cohort

    settings = {name: getattr(config, name) for name in COHORT_FIELDS}
    record = out / "demo.json"
    if record.is_file():
        try:
            before = json.loads(record.read_text())
        except json.JSONDecodeError:
            before = None
        if before != settings:
            raise UserError(f"{out} holds a demo made with other settings ({before}); use another --out or delete it")
    out.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(settings, indent=2) + "\n")
    folder = out / "cohort"
    csv = folder / "metadata.csv"
    if csv.is_file() and _cohort_complete(csv):
        return csv, True
    csv = write_cohort(folder, n_patients=config.patients, slides_per_patient=config.slides_per_patient,
                       diagnoses=DIAGNOSES, size=(config.size, config.size), seed=config.seed, mpp=config.mpp)
    return csv, False


def _cohort_complete(csv: Path) -> bool:
    import csv as csv_module

    with csv.open() as fh:
        ids = [row["slide_id"] for row in csv_module.DictReader(fh)]
    return bool(ids) and all((csv.parent / f"{slide_id}.tif").is_file() for slide_id in ids)


def run_queries(index: Path, thumbnails: Path, config: DemoConfig
                ) -> tuple[dict[str, Any], dict[str, str], dict[str, list[Path]]]:
    """One text, one slide (other patients only) and one patch (a region of another diagnosis) query.

    Returns:
        kind → SearchResult, kind → a note on what was asked, and kind → thumbnails of its first hits.
    """
    from retrieval.search import SlideSearcher
    from retrieval.query.thumbnails import write_hit_thumbnails

    searcher = SlideSearcher(index, device="cpu")
    arrays = searcher.arrays
    rows = sorted(arrays.ids.values())
    slide_row = rows[0]
    query_label = arrays.metadata[slide_row].get(config.label)
    other = next((r for r in rows if arrays.metadata[r].get(config.label) != query_label), rows[-1])
    patch_row = arrays.patch_start[other] + arrays.patch_count[other] // 2
    _, x, y, size, *_ = arrays.patches[patch_row].tolist()
    region = f"{arrays.metadata[other]['slide_id']}@{x},{y},{size},{size}"
    queries = {
        "text": searcher.search_text(config.text_query, k=config.k),
        "slide": searcher.search_slide(arrays.metadata[slide_row]["slide_id"], k=config.k,
                                       exclude_same=config.exclude_same),
        "patch": searcher.search_patch(region, k=config.k),
    }
    def about(row: int) -> str:
        meta = arrays.metadata[row]
        return f"{config.label} {meta.get(config.label)}, patient {meta.get('patient_id')}"

    notes = {"text": "free text, matched to the reports by the report model (real weights); the "
                     f"{config.model} text tower has random weights, so it joins only with --source both",
             "slide": f"{about(slide_row)}; slides of the same {config.exclude_same} left out",
             "patch": f"one {size}-px patch of a slide with {about(other)}"}
    written = {}
    for kind, result in queries.items():
        shown = dataclasses.replace(result, hits=result.hits[: config.thumbnails_per_query])
        written[kind] = write_hit_thumbnails(shown, thumbnails / kind)
    return queries, notes, written
