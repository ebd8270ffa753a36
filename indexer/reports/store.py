"""Report tables of an index version (``reports/vNNNNNN/``), derived from the metadata's report column and
written with that version: per report a dense vector (the report model over its text) and a BM25 document
of its polarity-tagged words (``lexical.py``); per sentence its text, offsets and tagged words; the bank
attributes each sentence states by name or synonym, with their polarity.

A folder is immutable once a version names it. A commit that changes reports writes a new folder: the rows
and vectors of every slide whose report text (sha256), model and bank are unchanged are copied from the
previous folder, so only changed reports are split, tagged and encoded; the BM25 index is rebuilt over all
reports (tokens are stored, so that costs no re-parsing).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from indexer.reports.ingest import REPORT_COLUMN, report_texts
from indexer.reports.lexical import build_lexical
from indexer.store.atomic import fsync_dir

FORMAT = 2  # 1: sentence embeddings and a sentence BM25 (re-index those)
INFO, SENTENCES, REPORTS, VECTORS, ATTRIBUTES, LEXICAL, PHRASES = "reports.json", "sentences.parquet", \
    "reports.parquet", "vectors.npy", "attributes.parquet", "lexical", "phrases.npy"
SENTENCE_SCHEMA = pa.schema([("sentence_row", pa.int64()), ("slide_id", pa.string()), ("position", pa.int32()),
                             ("start", pa.int32()), ("end", pa.int32()), ("text", pa.string()),
                             ("tokens", pa.string()), ("report_sha256", pa.string())])
REPORT_SCHEMA = pa.schema([("report_row", pa.int64()), ("slide_id", pa.string()), ("report_sha256", pa.string()),
                           ("first_sentence", pa.int64()), ("sentences", pa.int32())])
ATTRIBUTE_SCHEMA = pa.schema([("slide_id", pa.string()), ("sentence_row", pa.int64()), ("attribute", pa.string()),
                              ("kind", pa.string()), ("disease", pa.string()), ("polarity", pa.string()),
                              ("trigger", pa.string()), ("via", pa.string()), ("score", pa.float32()),
                              ("start", pa.int32()), ("end", pa.int32())])


@dataclass(frozen=True)
class ReportConfig:
    """How an index turns reports into tables.

    Attributes:
        column: the metadata column holding report text.
        model: a sentence-transformers folder (None: the packaged all-MiniLM-L6-v2).
    """

    column: str = REPORT_COLUMN
    model: str | None = None


class ReportFiles:
    """The report tables of one version (read only)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.info: dict[str, Any] = json.loads((self.folder / INFO).read_text())

    @property
    def current(self) -> bool:
        """Whether the tables are of this code's format (older ones are rebuilt at the next metadata commit)."""
        return self.info.get("format", 1) == FORMAT

    @cached_property
    def sentences(self) -> pa.Table:
        return pq.read_table(self.folder / SENTENCES)

    @cached_property
    def reports(self) -> pa.Table:
        return pq.read_table(self.folder / REPORTS)

    @cached_property
    def attributes(self) -> pa.Table:
        return pq.read_table(self.folder / ATTRIBUTES)

    @cached_property
    def vectors(self) -> np.ndarray:
        """(reports, dim) float16, memory-mapped."""
        return np.load(self.folder / VECTORS, mmap_mode="r")

    @cached_property
    def lexical(self):
        from indexer.reports.lexical import LexicalIndex

        return LexicalIndex(self.folder / LEXICAL)

    def slide_sha(self) -> dict[str, str]:
        """slide_id → sha256 of its report text."""
        table = (self.reports if self.current else self.sentences).select(["slide_id", "report_sha256"])
        return dict(zip(table.column("slide_id").to_pylist(), table.column("report_sha256").to_pylist()))


def build_reports(root: Path, number: int, metadata: pa.Table | None, previous: str | None, config: ReportConfig,
                  bank) -> str:
    """Write the report tables of version ``number`` from the merged ``metadata``; returns the folder
    relative to ``root``. ``previous``: the folder of the live version (reused for unchanged reports)."""
    from indexer.reports.analyze import analyze
    from indexer.reports.attributes import AttributeMatcher, bank_terms
    from indexer.reports.model import load_report_model

    t0 = time.perf_counter()
    texts = report_texts(metadata, config.column)
    model = load_report_model(config.model)
    t_model = time.perf_counter()
    old = ReportFiles(root / previous) if previous else None
    reusable = old is not None and old.current and old.info["model_sha256"] == model.sha256 \
        and old.info["bank_sha256"] == bank.sha256
    old_sha = old.slide_sha() if reusable else {}
    digests = {s: hashlib.sha256(t.encode()).hexdigest() for s, t in texts.items()}
    order = sorted(texts)
    fresh = [s for s in order if old_sha.get(s) != digests[s]]
    known = np.load(root / previous / PHRASES) if reusable and (root / previous / PHRASES).is_file() else None
    matcher = AttributeMatcher(bank_terms(bank), model, known)
    new = [analyze(s, texts[s], matcher) for s in fresh]
    t1 = time.perf_counter()
    fresh_vectors = model.encode([texts[s] for s in fresh])
    t2 = time.perf_counter()
    pieces = {r.slide_id: (r, fresh_vectors[j]) for j, r in enumerate(new)}
    pieces.update(_kept(old, [s for s in order if s not in pieces]) if reusable else {})
    info = {"column": config.column, "bank": bank.name, "bank_sha256": bank.sha256,
            "reused_slides": len(order) - len(fresh), "encoded_slides": len(fresh),
            "encoded_sentences": sum(len(r.sentences) for r in new),
            "timings": {"load model": round(t_model - t0, 3), "split+tag+attributes": round(t1 - t_model, 3),
                        "encode": round(t2 - t1, 3)}}
    folder = root / "reports" / f"v{number:06d}"
    write_reports(folder, _tables([pieces[s] for s in order], digests, model.dim), model, matcher.phrase_vectors, info)
    return str(folder.relative_to(root))


def write_reports(folder: Path, tables: tuple, model, phrase_vectors: np.ndarray, info: dict[str, Any]) -> None:
    """Write a report folder atomically (built beside it, then renamed) from its tables (sentences, reports,
    attributes, vectors, BM25 documents: one list of tagged words per report), in slide_id order; ``info`` is
    completed with the model and the counts."""
    t0 = time.perf_counter()
    sentences, reports, attributes, vectors, tokens = tables
    build = folder.with_name(f".build-{folder.name}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    pq.write_table(sentences, build / SENTENCES)
    pq.write_table(reports, build / REPORTS)
    pq.write_table(attributes, build / ATTRIBUTES)
    np.save(build / VECTORS, vectors.astype(np.float16))
    build_lexical(tokens, build / LEXICAL)
    np.save(build / PHRASES, phrase_vectors)
    info = {"format": FORMAT, **info, "model": model.name, "model_path": model.path, "model_sha256": model.sha256,
            "dim": model.dim, "slides": reports.num_rows, "sentences": sentences.num_rows, "attributes": attributes.num_rows}
    info.setdefault("timings", {})["write"] = round(time.perf_counter() - t0, 3)
    (build / INFO).write_text(json.dumps(info, indent=1) + "\n")
    build.rename(folder)
    fsync_dir(folder.parent)


def _kept(old: ReportFiles, slide_ids: list[str]) -> dict[str, tuple]:
    """(ReportRows, vector) of ``slide_ids`` as ``old`` stores them."""
    from indexer.reports.analyze import ReportRows

    if not slide_ids:
        return {}
    sentences, out = old.sentences.to_pylist(), {}
    by_row: dict[int, list[dict]] = {}
    for a in old.attributes.to_pylist():
        by_row.setdefault(a["sentence_row"], []).append(a)
    reports = {r["slide_id"]: r for r in old.reports.to_pylist()}
    for slide_id in slide_ids:
        r = reports[slide_id]
        rows = sentences[r["first_sentence"]:r["first_sentence"] + r["sentences"]]
        attrs = [{**a, "sentence": i} for i, x in enumerate(rows) for a in by_row.get(x["sentence_row"], ())]
        words = [w for x in rows for w in x["tokens"].split()]
        out[slide_id] = (ReportRows(slide_id, rows, attrs, words), np.asarray(old.vectors[r["report_row"]]))
    return out


def _tables(pieces: list, digests: dict[str, str], dim: int):
    """The sentence, report and attribute tables, the vectors and the BM25 documents of (ReportRows, vector)s."""
    sent_out, rep_out, attr_out, vectors, tokens = [], [], [], [], []
    for row, (report, vector) in enumerate(pieces):
        slide_id, first = report.slide_id, len(sent_out)
        sent_out.extend({"sentence_row": first + i, "slide_id": slide_id, "position": i, "start": x["start"],
                         "end": x["end"], "text": x["text"], "tokens": x["tokens"], "report_sha256": digests[slide_id]}
                        for i, x in enumerate(report.sentences))
        attr_out.extend({**{k: v for k, v in a.items() if k not in ("sentence", "sentence_row")},
                         "slide_id": slide_id, "sentence_row": first + a["sentence"]} for a in report.attributes)
        rep_out.append({"report_row": row, "slide_id": slide_id, "report_sha256": digests[slide_id],
                        "first_sentence": first, "sentences": len(report.sentences)})
        vectors.append(np.asarray(vector, np.float32))
        tokens.append(report.tokens)
    return (pa.Table.from_pylist(sent_out, SENTENCE_SCHEMA), pa.Table.from_pylist(rep_out, REPORT_SCHEMA),
            pa.Table.from_pylist(attr_out, ATTRIBUTE_SCHEMA),
            np.asarray(vectors, np.float32).reshape(len(vectors), dim), tokens)
