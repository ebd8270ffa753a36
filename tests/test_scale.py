"""Trained-once quantizers, exact re-rank, held-out recall and compaction (issue 13), on small synthetic
collections written through the store's writer by benchmarks/scale.py's generator (GPU paths: tests/test_faiss_gpu.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import faiss
import numpy as np
import pytest

from benchmarks import scale as scale_benchmark
from indexer import vectors as vi
from indexer.vectors.exact import tied_recall
from indexer.store import quantizer
from indexer.store.reader import Snapshot
from indexer.store.rerank import RerankedIndex, open_index

PLAN = quantizer.QuantizerPlan(nlist=32, nprobe=8)  # threshold 39·32 = 1,248 vectors
SLIDES, PATCHES, SEGMENT = 60, 50, 20  # 3 segments of 1,000 patches: the second crosses the threshold


@pytest.fixture(scope="module")
def bench():
    return scale_benchmark


@pytest.fixture(scope="module")
def built(bench, tmp_path_factory):
    """An index of 3 segments written in two runs; records what the first run left behind."""
    root = tmp_path_factory.mktemp("scale") / "index"
    gen = bench.ScaleGenerator(dim=32, k=4, patches=PATCHES)
    trained = []
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(quantizer, "PLAN", PLAN)
        real = quantizer.train_index  # what the store's quantizers train with
        mp.setattr(quantizer, "train_index", lambda *a, **kw: trained.append(a[1].describe()) or real(*a, **kw))
        bench.write_collection(root, 2 * SEGMENT, gen, SEGMENT)
        first = {p.name: p.stat().st_mtime_ns for p in (root / "quantizers").iterdir()}
        bench.write_collection(root, SLIDES, gen, SEGMENT)
    return {"root": root, "gen": gen, "trained": trained, "first": first}


def _queries(gen, n=40, seed=3):
    rng = np.random.default_rng(seed)
    return np.stack([gen.patch_draws(int(s), 1, stream=50 + i)[1][0] for i, s in enumerate(rng.integers(SLIDES, size=n))])


def _exact(snapshot, q, k):
    ids = np.arange(SLIDES * PATCHES)
    scores = q @ snapshot.vectors("patches", ids).T
    return np.sort(scores, axis=1)[:, ::-1][:, :k], ids[np.argsort(-scores, axis=1, kind="stable")[:, :k]]


def test_quantizer_is_trained_once_and_later_segments_store_only_codes(built):
    snapshot = Snapshot(built["root"])
    entries = [s["faiss"]["patches"] for s in snapshot.version.segments]
    first = snapshot.paths.segment(snapshot.version.segments[0]["id"])
    assert vi.load_index(first / "patches.faiss").ntotal == SEGMENT * PATCHES  # written exact, below the threshold,
    assert entries[0]["file"] == "codes/v000002-s000001-patches.faiss"  # back-filled under it by the training commit
    assert all(e["quantizer"] == "quantizers/s000002-patches.faiss" and e["kind"] == "ivf_pq" for e in entries)
    assert "file" not in entries[1] and "file" not in entries[2]
    assert 0 < entries[0]["recall_at_10"] <= entries[0]["recall_at_10_reranked"] and entries[0]["count"] == SEGMENT * PATCHES
    assert snapshot.version.quantizers == {"patches": "quantizers/s000002-patches.faiss"}
    assert len(built["trained"]) == 1 and built["trained"][0].startswith("IVF32_HNSW32,PQ4x")  # once, by segment 2
    files = {p.name: p.stat().st_mtime_ns for p in (built["root"] / "quantizers").iterdir()}
    assert files == built["first"]  # the third segment (a later run) did not rewrite it
    codes = vi.load_index(snapshot.paths.segment(snapshot.version.segments[2]["id"]) / "patches.faiss")
    assert faiss.extract_index_ivf(codes).quantizer.ntotal == 0  # the centroids live only in the quantizer file
    assert codes.ntotal == SEGMENT * PATCHES


def test_segments_under_one_quantizer_are_merged_and_reranked_exactly(built):
    snapshot = Snapshot(built["root"])
    index = open_index(snapshot, "patches")
    assert isinstance(index, RerankedIndex) and index.ntotal == SLIDES * PATCHES
    assert faiss.extract_index_ivf(index.inner).ntotal == SLIDES * PATCHES  # three segments, one inverted index
    q = _queries(built["gen"])
    exact_scores, exact_ids = _exact(snapshot, q, 10)
    scores, found = vi.search(index, q, 10)
    np.testing.assert_allclose(scores, np.einsum("qkd,qd->qk", snapshot.vectors("patches", found.ravel()).reshape(
        *found.shape, -1), q), atol=1e-5)  # re-ranked scores are the exact inner products
    some = np.unique(found.ravel())
    np.testing.assert_allclose(snapshot.scores("patches", some[::-1], q), q @ snapshot.vectors("patches", some[::-1]).T,
                               atol=1e-5)  # the chunked exact scores, in the order asked
    raw = vi.search(index.inner, q, 10)[1]
    exact = lambda ids: snapshot.vectors("patches", ids)  # noqa: E731
    reranked, plain = (tied_recall(q, f, exact, exact_scores[:, -1]) for f in (found, raw))
    assert reranked >= plain and reranked > 0.9
    faiss.extract_index_ivf(index.inner).nprobe = PLAN.nlist  # every list, and a pool of everything:
    whole = RerankedIndex(index.inner, index.gather, pool=index.ntotal)  # the re-rank is then exact search
    np.testing.assert_allclose(vi.search(whole, q, 10)[0], exact_scores, atol=1e-5)


def test_held_out_recall_is_recorded_and_info_shows_it(built, run_cli):
    entry = Snapshot(built["root"]).version.segments[2]["faiss"]["patches"]
    assert entry["recall_queries"] == "held-out" and 0 < entry["recall_at_10"] <= entry["recall_at_10_reranked"] <= 1
    result = run_cli("info", str(built["root"]), "--json")
    assert result.exit_code == 0, result.output
    patches = json.loads(result.output)["indexes"]["patches"]
    assert patches["recall_queries"] == "held-out" and patches["quantizer"] == "quantizers/s000002-patches.faiss"
    assert patches["recall_at_10_reranked"] >= patches["recall_at_10"]
    text = run_cli("info", str(built["root"]))
    assert text.exit_code == 0 and "re-ranked" in text.output and "held-out" in text.output


def test_held_out_recall_is_lower_than_self_query_recall_on_a_compressed_index():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, 32))
    x = centres[rng.integers(40, size=4000)] + 0.6 * rng.standard_normal((4000, 32))
    x = (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)
    ids = np.arange(4000) * 3 + 7
    index = vi.build_index(x, ids, vi.choice_for_kind("ivf_pq", 4000, 32, m=4))
    rows = np.sort(np.random.default_rng(0).choice(4000, 200, replace=False))  # the rows held out by default
    held_out, self_query = vi.measure_recall(index, x, ids), vi.measure_recall(index, x, ids, queries=x[rows])
    assert 0 < held_out < self_query < 1
    exact = vi.build_index(x, ids, vi.choice_for_kind("flat", 4000, 32))
    assert vi.measure_recall(exact, x, ids) == 1.0  # leaving the query out changes the answer, not exactness


def test_compact_retrain_replaces_the_quantizer_and_plain_compact_keeps_it(built, tmp_path, monkeypatch, run_cli):
    from indexer.store.compact import compact

    monkeypatch.setattr(quantizer, "PLAN", PLAN)
    root = tmp_path / "copy"
    shutil.copytree(built["root"], root)
    q = _queries(built["gen"])
    reader = Snapshot(root)
    before = vi.search(open_index(reader, "patches"), q, 10)
    reader.close()  # an open reader keeps its version's files (quantizer included) through vacuum
    kept = compact(root)
    assert kept["segments_after"] == 1 and kept["quantizers"]["patches"] == "quantizers/s000002-patches.faiss"
    reader = Snapshot(root)
    assert reader.version.segments[0]["faiss"]["patches"]["quantizer"] == kept["quantizers"]["patches"]
    assert (root / kept["quantizers"]["patches"]).is_file()
    reader.close()
    result = run_cli("compact", str(root), "--retrain", "--json")
    assert result.exit_code == 0, result.output
    new = json.loads(result.output)["quantizers"]["patches"]
    assert new != kept["quantizers"]["patches"] and (root / new).is_file()
    assert [p.name for p in (root / "quantizers").iterdir()] == [Path(new).name]  # vacuum removed the old one
    after = vi.search(open_index(Snapshot(root), "patches"), q, 10)
    exact = _exact(Snapshot(root), q, 10)[0]
    for scores in (before[0], after[0]):  # re-ranked answers stay close to exact through both compactions
        assert np.mean(scores[:, -1] >= exact[:, -1] - 0.05) > 0.9


def test_default_budget_at_1e8_caps_the_lists_and_a_retrain_fits_its_codes():
    choice = vi.choose_index(10**8, 512)
    assert choice.describe() == "IVF16384,PQ32x8" and choice.nlist == vi.MAX_NLIST  # was IVF40000
    assert vi.estimated_bytes("ivf_pq", 10**8, 512, m=choice.m) <= 4 * 2**30
    retrained = quantizer.plan_choice(10**8, 512, retrain=True)
    assert retrained.m == 32 and vi.estimated_bytes("ivf_pq", 10**8, 512, m=retrained.m) <= 4 * 2**30
    assert quantizer.plan_choice(10**8, 512, retrain=True, budget=16 * 2**30).m == 64


def test_auto_merge_leaves_segments_beyond_the_cap_to_compact():
    from indexer.store.compact import MAX_AUTO_MERGE_PATCHES, merge_candidates

    small = tuple({"id": f"s{i}", "patches": 1000} for i in range(10))
    big = tuple({"id": f"b{i}", "patches": MAX_AUTO_MERGE_PATCHES // 5} for i in range(10))
    assert merge_candidates(small) == [s["id"] for s in small] and merge_candidates(big) is None


def test_benchmark_device_cuda_refuses_without_a_gpu_in_one_line(bench, capsys, monkeypatch):
    monkeypatch.setattr(faiss, "get_num_gpus", lambda: 0)
    with pytest.raises(SystemExit) as stop:
        bench.main(["--device", "cuda", "--sizes", "", "--slides-at", "0"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no GPU" in err[0]


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
def test_row_file_reads_rows_in_place_and_refuses_a_truncated_file(tmp_path, dtype):
    from indexer.vectors.exact import RowFile

    data = np.random.default_rng(0).standard_normal((50, 24)).astype(dtype)
    np.save(tmp_path / "v.npy", data)
    rows = RowFile(tmp_path / "v.npy")
    np.testing.assert_array_equal(rows.take(np.array([7, 0, 49])), data[[7, 0, 49]].astype(np.float32))
    out = np.full((4, 24), -1, np.float32)
    rows.take(np.array([3, 9]), out, np.array([2, 0]))
    np.testing.assert_array_equal(out[[2, 0]], data[[3, 9]].astype(np.float32))
    assert (out[[1, 3]] == -1).all()
    queries, picked = np.random.default_rng(1).standard_normal((3, 24)).astype(np.float32), np.array([5, 1, 40, 2, 33])
    for chunk in (1, rows.row_bytes * 2, 1 << 20):  # a row, two rows, everything at a time
        np.testing.assert_allclose(rows.dot(picked, queries, chunk), queries @ data[picked].astype(np.float32).T,
                                   rtol=1e-5, atol=1e-5)
    with open(tmp_path / "v.npy", "r+b") as fh:
        fh.truncate(rows.offset + 10 * rows.row_bytes)
    with pytest.raises(OSError, match="past the end"):
        RowFile(tmp_path / "v.npy").take(np.array([12]))


def test_a_provisional_quantizer_gives_way_to_the_full_one_and_every_segment_follows(bench, tmp_path, monkeypatch):
    """Past ``exact_max`` vectors a provisional quantizer (as many lists as its sample trains) takes every segment;
    at the threshold the full one replaces it and every earlier segment is re-encoded under it: a live index is
    always one inverted index, never exact segments beside it."""
    from indexer.store.compact import vacuum
    from indexer.store.writer import IndexWriter

    monkeypatch.setattr(quantizer, "PLAN", quantizer.QuantizerPlan(nlist=32, nprobe=8, exact_max=400))
    root, gen = tmp_path / "index", bench.ScaleGenerator(dim=32, k=4, patches=50)

    def grown(slides: int):  # commits of 6 slides (300 patches)
        bench.write_collection(root, slides, gen, 6)
        snapshot = Snapshot(root)
        return snapshot, [s["faiss"]["patches"] for s in snapshot.version.segments]

    snapshot, entries = grown(6)
    assert entries[0]["kind"] == "flat" and "patches" not in snapshot.version.quantizers  # 300 ≤ exact_max
    snapshot, entries = grown(12)
    provisional = snapshot.version.quantizers["patches"]
    assert provisional == "quantizers/s000002-patches.faiss"
    assert faiss.extract_index_ivf(vi.load_index(root / provisional)).nlist == 8  # 600 vectors: 15 per list → 8
    assert [e["quantizer"] for e in entries] == [provisional] * 2 and entries[0]["file"].startswith("codes/v000002-")
    snapshot, entries = grown(30)
    full = snapshot.version.quantizers["patches"]
    assert full == "quantizers/s000005-patches.faiss" != provisional  # 1,500 ≥ 39·32: the full quantizer
    assert faiss.extract_index_ivf(vi.load_index(root / full)).nlist == 32
    assert [e["quantizer"] for e in entries] == [full] * 5
    assert [e.get("file") for e in entries] == [f"codes/v000005-s00000{i}-patches.faiss" for i in range(1, 5)] + [None]
    assert all(0 < e["recall_at_10"] <= e["recall_at_10_reranked"] for e in entries)
    index = open_index(snapshot, "patches")
    assert faiss.extract_index_ivf(index.inner).ntotal == 30 * 50  # one inverted index over the five segments
    q = _queries(gen, seed=4)
    ids = np.arange(30 * 50)
    exact = q @ snapshot.vectors("patches", ids).T
    truth = np.sort(exact, axis=1)[:, ::-1][:, 9]
    found = vi.search(index, q, 10)[1]
    assert tied_recall(q, found, lambda x: snapshot.vectors("patches", x), truth) > 0.9
    snapshot.close()
    with IndexWriter(root) as writer:  # nothing names the provisional quantizer or the first codes any more
        vacuum(writer.paths, writer.version)
    assert sorted(p.name for p in (root / "quantizers").iterdir()) == ["s000005-patches.faiss"]
    assert sorted(p.name for p in (root / "codes").iterdir()) == [f"v000005-s00000{i}-patches.faiss" for i in range(1, 5)]


def test_scores_across_row_files_fill_one_buffer_in_any_chunk(tmp_path):
    from indexer.vectors.exact import RowFile, dot_rows

    rng = np.random.default_rng(2)
    parts = [rng.standard_normal((n, 16)).astype(np.float16) for n in (7, 1, 12)]
    for i, part in enumerate(parts):
        np.save(tmp_path / f"p{i}.npy", part)
    files = [RowFile(tmp_path / f"p{i}.npy") for i in range(3)]
    picks = [np.array([6, 0, 3]), np.array([0]), np.array([11, 2, 5, 7])]
    wheres = [np.array([7, 0, 2]), np.array([5]), np.array([1, 3, 6, 4])]  # their columns in the answer
    queries = rng.standard_normal((2, 16)).astype(np.float32)
    expected = np.empty((2, 8), np.float32)
    for part, pick, where in zip(parts, picks, wheres):
        expected[:, where] = queries @ part[pick].astype(np.float32).T
    for chunk in (1, files[0].row_bytes * 2, files[0].row_bytes * 3, 1 << 20):
        out = dot_rows(list(zip(files, picks, wheres)), queries, np.full((2, 8), np.nan, np.float32), chunk)
        np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_an_index_written_without_back_fill_gets_its_exact_segments_encoded_by_its_next_write(bench, tmp_path,
                                                                                             monkeypatch):
    import indexer.store.writer as writer_module

    monkeypatch.setattr(quantizer, "PLAN", PLAN)
    root, gen = tmp_path / "index", bench.ScaleGenerator(dim=32, k=4, patches=PATCHES)
    with pytest.MonkeyPatch.context() as old:  # as the store wrote before back-fills: exact beside the quantizer
        old.setattr(writer_module, "backfill", lambda paths, number, segments, quantizers: tuple(segments))
        bench.write_collection(root, 2 * SEGMENT, gen, SEGMENT)
    entries = [s["faiss"]["patches"] for s in Snapshot(root).version.segments]
    assert entries[0]["kind"] == "flat" and entries[1]["kind"] == "ivf_pq"
    bench.write_collection(root, 3 * SEGMENT, gen, SEGMENT)
    snapshot = Snapshot(root)
    entries = [s["faiss"]["patches"] for s in snapshot.version.segments]
    assert [e["quantizer"] for e in entries] == ["quantizers/s000002-patches.faiss"] * 3
    assert entries[0]["file"] == f"codes/v{snapshot.version.number:06d}-s000001-patches.faiss"
    assert faiss.extract_index_ivf(open_index(snapshot, "patches").inner).ntotal == 3 * SEGMENT * PATCHES


def test_vacuum_keeps_back_filled_codes_while_a_reader_holds_their_version(built, tmp_path, monkeypatch):
    from indexer.store.compact import compact

    monkeypatch.setattr(quantizer, "PLAN", PLAN)
    root = tmp_path / "copy"
    shutil.copytree(built["root"], root)
    reader = Snapshot(root)
    codes = [root / e["file"] for s in reader.version.segments for e in s["faiss"].values() if e.get("file")]
    assert codes
    q = _queries(built["gen"])
    before = vi.search(open_index(reader, "patches"), q, 5)[1]
    compact(root)  # one merged segment: nothing live names the codes any more, but the reader's version does
    assert all(p.is_file() for p in codes)
    np.testing.assert_array_equal(vi.search(open_index(reader, "patches"), q, 5)[1], before)
    reader.close()
    compact(root)
    assert not any(p.exists() for p in codes)
