"""The store's invariants (DESIGN §4): stable ids, one version per reader, O(change) writes, bounded memory,
merged metadata, fingerprinted settings; readers across writes; one writer at a time; removal and compaction."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import store_scenario as scenario
from indexer import vectors as vi
from indexer.errors import IndexError_
from indexer.store.compact import compact, merge_candidates
from indexer.store.segments import SlideRows
from indexer.store.writer import IndexWriter
from retrieval.query.catalog import Catalog
from retrieval.search import SlideSearcher


class VectorEncoder:
    """The "image" of a patch query is already its embedding."""

    @staticmethod
    def encode_images(images):
        return np.stack(images).astype(np.float32)


def built(tmp_path: Path, *ops: str) -> Path:
    root = tmp_path / "idx"
    for op in ops:
        scenario.OPS[op](root)
    return root


def rows_of(root: Path) -> dict[str, tuple[int, int]]:
    return {s["slide_id"]: (s["slide_row"], s["patch_row_start"]) for s in Catalog(root).slides.to_pylist()}


def answers(searcher: SlideSearcher) -> list:
    """Slide, text and patch answers (ids and scores) for fixed queries."""
    out = []
    for slide_id in ("A", "C"):
        if searcher.arrays.row_of(slide_id) is not None:
            out.append([(h.slide_id, round(h.score, 6)) for h in searcher.search_slide(slide_id, 5).hits])
    for q in scenario.unit(np.random.default_rng(3).standard_normal((2, scenario.DIM))):
        out.append([(h.slide_id, round(h.score, 6)) for h in searcher.search_text_vector(q, 5).hits])
        out.append([(h.slide_id, round(h.score, 6)) for h in searcher.search_patch(list(q), 5).hits])
    return out


def test_ids_are_stable_across_adds_removals_and_compaction(tmp_path):
    root = built(tmp_path, "base")
    first = rows_of(root)
    assert [first[s][0] for s in scenario.BASE] == [0, 1, 2, 3, 4]
    scenario.add(root, scenario.BASE + scenario.ADDED)
    second = rows_of(root)
    assert {s: second[s] for s in scenario.BASE} == first and [second[s][0] for s in scenario.ADDED] == [5, 6, 7]
    before = {name: vi.reconstruct(Catalog(root).faiss(name), np.array([second["C"][0]])) for name in ("slides", "slides_mean")}
    with IndexWriter(root) as writer:
        writer.remove(["A", "F"])
    compact(root)
    third = rows_of(root)
    assert third == {s: r for s, r in second.items() if s not in ("A", "F")}  # nothing renumbered
    catalog = Catalog(root)
    assert len(catalog.snapshot.version.segments) == 1
    for name, vec in before.items():  # FAISS ids are the rows
        np.testing.assert_array_equal(vi.reconstruct(catalog.faiss(name), np.array([third["C"][0]])), vec)
    scenario.add(root, ["A2"])
    assert rows_of(root)["A2"][0] == 8  # a new id, never a removed one (A was 0, F was 5)


def test_patch_features_of_a_slide_are_its_staged_features_after_removal_and_compaction(tmp_path):
    root = built(tmp_path, "base", "add")
    with IndexWriter(root) as writer:
        writer.remove(["A", "D"])
    compact(root)
    catalog = Catalog(root)
    for s in catalog.slides.to_pylist():
        got = catalog.snapshot.patch_features(s["slide_row"], s["patch_row_start"], s["n_patches"])
        np.testing.assert_array_equal(got, scenario.staged(s["slide_id"]).features)


def test_a_reader_keeps_its_version_until_refresh(tmp_path):
    root = built(tmp_path, "base")
    searcher = SlideSearcher(root, encoder=VectorEncoder())
    before = answers(searcher)
    writing = threading.Thread(target=scenario.add, args=(root, scenario.BASE + scenario.ADDED))
    writing.start()
    during = []
    while writing.is_alive():
        during.append(answers(searcher))
    writing.join()
    assert all(a == before for a in during) and answers(searcher) == before
    with IndexWriter(root) as writer:
        writer.remove(["C"])
    assert answers(searcher) == before and searcher.arrays.row_of("C") is not None
    assert searcher.refresh() is True
    assert searcher.arrays.row_of("C") is None and searcher.arrays.row_of("F") is not None
    assert answers(searcher) != before and searcher.refresh() is False


def test_searches_never_wait_for_the_writer_lock(tmp_path):
    root = built(tmp_path, "base")
    with IndexWriter(root):  # the writer lock is held for the whole block
        done = []
        reader = threading.Thread(target=lambda: done.append(answers(SlideSearcher(root, encoder=VectorEncoder()))))
        reader.start()
        reader.join(timeout=30)
        assert done, "a search waited for the writer"


def test_a_write_touches_only_what_changed(tmp_path, monkeypatch):
    root = built(tmp_path, "base")
    segment_files = {p: p.read_bytes() for p in (root / "segments").rglob("*") if p.is_file()}
    import indexer.store.writer as writer_module

    aggregated = []
    original = writer_module.aggregate_slide
    monkeypatch.setattr(writer_module, "aggregate_slide", lambda X, *a, **k: aggregated.append(len(X)) or original(X, *a, **k))
    scenario.add(root, scenario.BASE + ("F",))
    assert len(aggregated) == 1  # only the new slide is aggregated (P is fixed)
    assert {p: p.read_bytes() for p in segment_files} == segment_files  # old segments are immutable
    assert len(list((root / "segments").iterdir())) == 2


def test_indexing_memory_does_not_grow_with_the_segment(tmp_path):
    """Python-side peak memory of writing a segment of 100 vs 400 slides of 1,000 patches: features, vectors and
    tables stream through memory maps and Parquet batches, so only 8-byte ids grow with the segment (FAISS's
    own C++ buffers and whole-process RSS are measured in benchmarks/incremental.py)."""
    from indexer.aggregation.aggregate import aggregate_slide

    dim, n_patches, peaks = 64, 1000, []
    rng = np.random.default_rng(0)
    protos = scenario.unit(rng.standard_normal((scenario.K, dim)))
    feats = scenario.unit(rng.standard_normal((n_patches, dim))).astype(np.float16)
    coords = np.zeros((n_patches, 2), np.int64)
    emb = aggregate_slide(feats.astype(np.float32), protos)
    settings = scenario.SETTINGS.__class__(**{**scenario.SETTINGS.__dict__, "encoder": {**scenario.SETTINGS.encoder, "dim": dim}})
    for n in (100, 400):
        with IndexWriter(tmp_path / f"n{n}", create=True) as writer:
            writer.set_identity(settings)
            names = [f"p{i}" for i in range(scenario.K)]
            writer.fix_prototypes(pa.table({"proto_id": pa.array(range(scenario.K), pa.int32()), "name": names,
                                            "descriptions": [[x] for x in names]}), protos)
            records = [{"slide_id": f"S{i:04d}", "status": "ok", "n_patches": n_patches, "patch_size": 224}
                       for i in range(n)]
            rows = lambda r: SlideRows(r, coords, feats, emb.patch_proto, emb.patch_proto_sim, emb.slide_vector,  # noqa: E731
                                       emb.mean_vector, emb.subvectors, emb.mass)
            tracemalloc.start()
            writer.append_segment(records, rows, (scenario.K, dim), faiss_kind="flat")
            peaks.append(tracemalloc.get_traced_memory()[1])
            tracemalloc.stop()
    added = 300 * n_patches
    assert peaks[1] - peaks[0] < 24 * added, peaks  # ids only; the features alone are 128 bytes a patch


def test_metadata_merges_and_reports_unmatched_rows(tmp_path, run_cli):
    root = built(tmp_path, "base")
    first, second = tmp_path / "first.csv", tmp_path / "second.csv"
    first.write_text("slide_id,patient_id,label\nA,001,tumour\nB,002,normal\nC,003,tumour\n")
    second.write_text("slide_id,label,age:int\nB,tumour; grade 2 -- see report,61\nNOPE,x,1\n")
    assert run_cli("metadata", root, first).exit_code == 0
    result = run_cli("metadata", root, second)
    assert result.exit_code == 0 and "1 match no indexed slide" in result.stdout and "'NOPE'" in result.stdout
    slides = {s["slide_id"]: s for s in Catalog(root).slides.to_pylist()}
    assert slides["A"]["patient_id"] == "001" and slides["A"]["label"] == "tumour" and slides["A"]["age"] is None
    assert slides["B"]["label"] == "tumour; grade 2 -- see report" and slides["B"]["age"] == 61
    assert slides["B"]["patient_id"] == "002" and slides["C"]["label"] == "tumour"
    rows = Catalog(root).allowed_slide_rows("age > 60").tolist()
    assert rows == [slides["B"]["slide_row"]]


def test_a_second_writer_is_refused_naming_the_holder_and_wait_waits(tmp_path, run_cli):
    root = built(tmp_path, "base")
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, %r); from indexer.store.writer import IndexWriter\n"
        "with IndexWriter(%r):\n    print('locked', flush=True); time.sleep(3)") % (str(Path.cwd()), str(root))],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    refused = run_cli("remove", root, "A")
    assert refused.exit_code == 2
    line = refused.stderr.strip()
    assert "\n" not in line and f"pid {holder.pid}" in line and "started" in line and "--wait" in line
    start = time.monotonic()
    waited = run_cli("remove", root, "A", "--wait")
    assert waited.exit_code == 0 and time.monotonic() - start > 0.5, waited.output
    holder.wait()
    assert "A" not in rows_of(root)


def test_a_lock_left_by_a_dead_writer_is_taken_over_with_a_message(tmp_path, capfd):
    root = built(tmp_path, "base")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (root / "LOCK").write_text(json.dumps({"pid": dead.pid, "started": "2026-01-01T00:00:00+00:00"}))
    with IndexWriter(root) as writer:
        writer.remove(["A"])
    err = capfd.readouterr().err
    assert f"left by pid {dead.pid}" in err and "no longer running" in err


def test_removed_slides_vanish_at_once_and_compaction_changes_no_answer(tmp_path, run_cli):
    root = built(tmp_path, "base", "add")
    searcher = SlideSearcher(root, encoder=VectorEncoder())
    assert run_cli("remove", root, "C", "G").exit_code == 0
    searcher.refresh()
    queries = scenario.unit(np.random.default_rng(5).standard_normal((4, scenario.DIM)))
    results = [searcher.search_text_vector(q, 8) for q in queries] + [searcher.search_patch(list(q), 8) for q in queries]
    results += [searcher.search_slide(s, 8) for s in ("A", "F")]
    seen = {h.slide_id for r in results for h in r.hits}
    assert seen and not seen & {"C", "G"}
    assert searcher.arrays.row_of("C") is None
    with pytest.raises(Exception):
        searcher.search_slide("C", 3)
    before = [[(h.slide_id, h.score, [p.patch_row for p in h.patches]) for h in r.hits] for r in results]
    result = run_cli("compact", root, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["segments_before"] == 2 and summary["segments_after"] == 1
    assert summary["removed"]["segments"] == 0  # the open searcher still reads them
    searcher.refresh()
    again = [searcher.search_text_vector(q, 8) for q in queries] + [searcher.search_patch(list(q), 8) for q in queries]
    again += [searcher.search_slide(s, 8) for s in ("A", "F")]
    after = [[(h.slide_id, h.score, [p.patch_row for p in h.patches]) for h in r.hits] for r in again]
    assert [[(s, p) for s, _, p in r] for r in after] == [[(s, p) for s, _, p in r] for r in before]
    np.testing.assert_allclose([x for r in after for _, x, _ in r], [x for r in before for _, x, _ in r], atol=1e-6)
    assert Catalog(root).manifest["counts"]["tombstoned"] == 0
    assert json.loads(run_cli("compact", root, "--json").stdout)["removed"]["segments"] == 2


def test_vacuum_keeps_the_files_an_open_reader_uses(tmp_path):
    root = built(tmp_path, "base", "add")
    searcher = SlideSearcher(root, encoder=VectorEncoder())  # holds version 2 and its two segments
    with IndexWriter(root) as writer:
        writer.remove(["B"])
    compact(root)
    assert len(list((root / "segments").iterdir())) == 3  # the reader's two, and the merged one
    assert answers(searcher)  # still answers from its version, FAISS files loaded lazily
    searcher.catalog.snapshot.close()
    compact(root)
    assert len(list((root / "segments").iterdir())) == 1


def test_ten_small_commits_are_merged_automatically_without_changing_answers(tmp_path):
    from indexer.store.compact import auto_merge, vacuum

    root = tmp_path / "idx"
    for i in range(10):
        scenario.add(root, [f"S{i}"])
    assert len(Catalog(root).snapshot.version.segments) == 10
    before = answers(SlideSearcher(root, encoder=VectorEncoder()))
    with IndexWriter(root) as writer:
        assert auto_merge(writer) == 1
        vacuum(writer.paths, writer.version)
    assert len(Catalog(root).snapshot.version.segments) == 1 and len(list((root / "segments").iterdir())) == 1
    after = answers(SlideSearcher(root, encoder=VectorEncoder()))
    assert [[s for s, _ in r] for r in after] == [[s for s, _ in r] for r in before]


def test_merge_policy_merges_ten_segments_of_one_tier():
    segments = tuple({"id": f"s{i}", "patches": 1000 + i} for i in range(9)) + ({"id": "new", "patches": 50},)
    assert merge_candidates(segments) is None  # the small newcomer is another tier
    assert merge_candidates(segments[:9] + ({"id": "s9", "patches": 5000},)) == [f"s{i}" for i in range(9)] + ["s9"]


def test_a_version_1_index_is_refused_with_how_to_migrate(tmp_path, run_cli):
    root = tmp_path / "old"
    root.mkdir()
    (root / "manifest.json").write_text(json.dumps({"schema_version": 1}))
    for args in (("info", root), ("search", "slide", root, "A")):
        result = run_cli(*args)
        assert result.exit_code == 2 and "slidesearch migrate" in result.stderr and "\n" not in result.stderr.strip()
    with pytest.raises(IndexError_, match="migrate"):
        IndexWriter(root).__enter__()


def test_commands_on_a_missing_index_are_one_line_and_create_nothing(tmp_path, run_cli):
    for args in (("remove", tmp_path / "none", "A"), ("compact", tmp_path / "none"), ("info", tmp_path / "none"),
                 ("metadata", tmp_path / "none", tmp_path / "x.csv")):
        result = run_cli(*args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
    assert not (tmp_path / "none").exists()
