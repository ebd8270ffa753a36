"""Report tables of an index version (``reports/vNNNNNN/``): sentences, their dense embeddings, their
attributes and a BM25 index, derived from the metadata's report column and written with that version.

A folder is immutable once a version names it. A commit that changes reports writes a new folder: the
sentences, embeddings and attributes of every slide whose report text (sha256), model and bank are
unchanged are copied from the previous folder, so only changed reports are split, encoded and matched;
the BM25 index is rebuilt over all sentences (tokenizing is ~100× cheaper than encoding).
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
from indexer.reports.sentences import split_sentences
from indexer.store.atomic import fsync_dir

INFO, SENTENCES, EMBEDDINGS, ATTRIBUTES, LEXICAL, PHRASES = "reports.json", "sentences.parquet", "embeddings.npy", \
    "attributes.parquet", "lexical", "phrases.npy"
SENTENCE_SCHEMA = pa.schema([("sentence_row", pa.int64()), ("slide_id", pa.string()), ("position", pa.int32()),
                             ("start", pa.int32()), ("end", pa.int32()), ("text", pa.string()),
                             ("report_sha256", pa.string())])
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

    @cached_property
    def sentences(self) -> pa.Table:
        return pq.read_table(self.folder / SENTENCES)

    @cached_property
    def attributes(self) -> pa.Table:
        return pq.read_table(self.folder / ATTRIBUTES)

    @cached_property
    def embeddings(self) -> np.ndarray:
        """(sentences, dim) float16, memory-mapped."""
        return np.load(self.folder / EMBEDDINGS, mmap_mode="r")

    @cached_property
    def lexical(self):
        from indexer.reports.lexical import LexicalIndex

        return LexicalIndex(self.folder / LEXICAL)

    def slide_sha(self) -> dict[str, str]:
        """slide_id → sha256 of its report text."""
        table = self.sentences.select(["slide_id", "report_sha256"])
        return dict(zip(table.column("slide_id").to_pylist(), table.column("report_sha256").to_pylist()))


def build_reports(root: Path, number: int, metadata: pa.Table | None, previous: str | None, config: ReportConfig,
                  bank) -> str:
    """Write the report tables of version ``number`` from the merged ``metadata``; returns the folder
    relative to ``root``. ``previous``: the folder of the live version (reused for unchanged reports)."""
    from indexer.reports.attributes import AttributeMatcher, bank_terms
    from indexer.reports.lexical import build_lexical
    from indexer.reports.model import load_report_model

    t0 = time.perf_counter()
    texts = report_texts(metadata, config.column)
    model = load_report_model(config.model)
    t_model = time.perf_counter()
    old = ReportFiles(root / previous) if previous else None
    reusable = old is not None and old.info["model_sha256"] == model.sha256 and old.info["bank_sha256"] == bank.sha256
    old_sha = old.slide_sha() if reusable else {}
    digests = {s: hashlib.sha256(t.encode()).hexdigest() for s, t in texts.items()}
    kept = sorted(s for s in texts if old_sha.get(s) == digests[s])
    fresh = sorted(s for s in texts if s not in set(kept))
    sent_rows, vectors, attr_rows = _reused(old, kept) if kept else ([], [], [])
    pieces = [(s, i, span) for s in fresh for i, span in enumerate(split_sentences(texts[s]))]
    t1 = time.perf_counter()
    fresh_vectors = model.encode([span.text for _, _, span in pieces])
    known = np.load(root / previous / PHRASES) if reusable and (root / previous / PHRASES).is_file() else None
    matcher = AttributeMatcher(bank_terms(bank), model, known)
    findings = matcher.match([span for _, _, span in pieces])
    t2 = time.perf_counter()
    base = len(sent_rows)
    for j, ((slide_id, position, span), found) in enumerate(zip(pieces, findings)):
        sent_rows.append({"slide_id": slide_id, "position": position, "start": span.start, "end": span.end,
                          "text": span.text, "report_sha256": digests[slide_id]})
        attr_rows.extend({"slide_id": slide_id, "sentence_row": base + j, **f.__dict__} for f in found)
    for i, row in enumerate(sent_rows):
        row["sentence_row"] = i
    folder = root / "reports" / f"v{number:06d}"
    build = folder.with_name(f".build-{folder.name}")
    shutil.rmtree(build, ignore_errors=True)
    build.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(sent_rows, SENTENCE_SCHEMA), build / SENTENCES)
    pq.write_table(pa.Table.from_pylist(attr_rows, ATTRIBUTE_SCHEMA), build / ATTRIBUTES)
    dense = np.concatenate([*vectors, fresh_vectors]) if vectors else fresh_vectors
    np.save(build / EMBEDDINGS, dense.astype(np.float16).reshape(-1, model.dim))
    build_lexical([r["text"] for r in sent_rows], build / LEXICAL)
    np.save(build / PHRASES, matcher.phrase_vectors)
    info = {"column": config.column, "model": model.name, "model_path": model.path, "model_sha256": model.sha256,
            "dim": model.dim, "bank": bank.name, "bank_sha256": bank.sha256, "slides": len(texts),
            "sentences": len(sent_rows), "attributes": len(attr_rows), "reused_slides": len(kept),
            "encoded_slides": len(fresh), "encoded_sentences": len(pieces),
            "timings": {"load model": round(t_model - t0, 3), "split+reuse": round(t1 - t_model, 3),
                        "encode+attributes": round(t2 - t1, 3),
                        "write": round(time.perf_counter() - t2, 3)}}
    (build / INFO).write_text(json.dumps(info, indent=1) + "\n")
    build.rename(folder)
    fsync_dir(folder.parent)
    return str(folder.relative_to(root))


def _reused(old: ReportFiles, slide_ids: list[str]) -> tuple[list[dict], list[np.ndarray], list[dict]]:
    """The sentence rows, embeddings and attribute rows of ``slide_ids`` in ``old`` (sentence_row renumbered)."""
    import pyarrow.compute as pc

    mask = pc.is_in(old.sentences.column("slide_id"), pa.array(slide_ids, pa.string()))
    table = old.sentences.filter(mask)
    old_rows = table.column("sentence_row").to_numpy()
    new_of = {int(r): i for i, r in enumerate(old_rows)}
    attrs = old.attributes.filter(pc.is_in(old.attributes.column("sentence_row"), pa.array(old_rows))).to_pylist()
    for a in attrs:
        a["sentence_row"] = new_of[a["sentence_row"]]
    return table.to_pylist(), [np.asarray(old.embeddings[old_rows], np.float32)], attrs
