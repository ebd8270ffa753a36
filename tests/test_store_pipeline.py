"""The store through `slidesearch` commands: fingerprinted settings, metadata without encoding, removal seen
by `bench retrieval`, version 1 migration, slide ids that never become paths, and failures outside a slide."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from indexer.ingestion.config import IndexConfig
from indexer.ingestion.run import run_index
from indexer.store.segments import SegmentFiles
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide
from indexer.tiles.tiling import TilingConfig
from indexer.vectors import reconstruct
from retrieval.query.catalog import Catalog
from retrieval.search import SlideSearcher

FAST = ["--mag", "10", "--patch", "64", "--workers", "0", "--quiet", "--model", "tiny"]
CONFIG = IndexConfig(model="tiny", tiling=TilingConfig(magnification=10, patch_px=64), num_workers=0)
RUN = "import sys; sys.argv = ['slidesearch', *sys.argv[1:]]; from retrieval.cli import main; main()"


def slides(folder: Path, names=("A", "B", "C"), tissues=("tumour", "necrosis", "mucin")) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, (name, tissue) in enumerate(zip(names, tissues)):
        write_slide(folder / f"{name}.tif", SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, tissue),), seed=i))
    return folder


def live(root: Path) -> dict[str, dict]:
    return {s["slide_id"]: s for s in Catalog(root).slides.to_pylist()}


def test_a_slide_is_never_kept_from_a_run_with_other_settings(tmp_path):
    folder, out = slides(tmp_path / "s"), tmp_path / "idx"
    run_index([folder], out, CONFIG, show_progress=False)
    first = live(out)
    again = run_index([folder], out, CONFIG, show_progress=False)
    assert sorted(again.skipped) == ["A", "B", "C"]
    other_mpp = run_index([folder], out, IndexConfig(**{**CONFIG.__dict__, "mpp": 0.3}), show_progress=False)
    assert sorted(other_mpp.indexed) == ["A", "B", "C"]  # re-encoded, not kept
    now = live(out)
    assert all(now[s]["fingerprint"] != first[s]["fingerprint"] and now[s]["slide_row"] > 2 for s in now)
    assert {round(s["mpp"], 3) for s in now.values()} == {0.3}


def test_a_killed_first_run_rerun_with_other_tiling_keeps_none_of_its_slides(tmp_path):
    folder, out = slides(tmp_path / "s"), tmp_path / "idx"
    env = {**os.environ, "SLIDESEARCH_CRASH_AT": "commit.version"}
    killed = subprocess.run([sys.executable, "-c", RUN, "index", str(folder), "--out", str(out), *FAST], env=env,
                            capture_output=True, timeout=300)
    assert killed.returncode == -9 and len(list((out / "staging").glob("*.npz"))) == 3
    other = FAST[:1] + ["20"] + FAST[2:]
    rerun = subprocess.run([sys.executable, "-c", RUN, "index", str(folder), "--out", str(out), *other, "--json"],
                           capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    report = json.loads(rerun.stdout)
    assert sorted(report["indexed"]) == ["A", "B", "C"] and report["resumed"] == []
    assert "replacing its settings" in rerun.stderr and "encoded again" in " ".join(report["notes"])
    assert json.loads((out / "index.json").read_text())["tiling"]["magnification"] == 20


def test_metadata_command_encodes_nothing_and_index_metadata_merges(tmp_path, run_cli, monkeypatch):
    folder, out = slides(tmp_path / "s"), tmp_path / "idx"
    first = tmp_path / "first.csv"
    first.write_text("filename,patient_id,label\nA.tif,001,x\nB.tif,002,y\nC.tif,003,z\n")
    assert run_cli("index", folder, "--out", out, "--metadata", first, *FAST).exit_code == 0
    import indexer.models.encoders

    monkeypatch.setattr(indexer.models.encoders, "load_encoder", lambda *a, **k: pytest.fail("metadata encoded something"))
    second = tmp_path / "second.csv"
    second.write_text("slide_id,label,site\nB,yy,s2\nQ,q,s9\nQ,q2,s9\n")
    result = run_cli("metadata", out, second)
    assert result.exit_code == 0, result.output
    assert "1 match no indexed slide" in result.stdout and "1 duplicate ids" in result.stdout
    assert "2 indexed slides have no row" in result.stdout
    monkeypatch.undo()
    third = tmp_path / "third.csv"
    third.write_text("path,site\n/anywhere/C.tif,s3\n")
    assert run_cli("index", folder, "--out", out, "--metadata", third, *FAST).exit_code == 0
    rows = live(out)
    assert [rows[s]["patient_id"] for s in "ABC"] == ["001", "002", "003"]  # text stays text
    assert [rows[s]["label"] for s in "ABC"] == ["x", "yy", "z"] and [rows[s]["site"] for s in "ABC"] == [None, "s2", "s3"]


def test_removed_slides_vanish_from_bench_retrieval(tmp_path, run_cli):
    from retrieval.evaluation.bench_retrieval import run_retrieval_benchmark

    folder, out = slides(tmp_path / "s", "ABCD", ("tumour", "tumour", "mucin", "mucin")), tmp_path / "idx"
    csv = tmp_path / "m.csv"
    csv.write_text("slide_id,label\nA,t\nB,t\nC,m\nD,m\n")
    assert run_cli("index", folder, "--out", out, "--metadata", csv, *FAST).exit_code == 0
    assert run_retrieval_benchmark(out, "label", ks=(1,), exclude_same=None)["n_queries"] == 4
    assert run_cli("remove", out, "B").exit_code == 0
    result = run_retrieval_benchmark(out, "label", ks=(1,), exclude_same=None)
    assert result["n_queries"] == 3
    assert all("B" not in hits for res in result["results"].values() for hits in res["hits"].values())


def write_v1(v2: Path, v1: Path) -> None:
    """The version 1 layout the last version 1 commit wrote (manifest.json, four tables, four FAISS files,
    features/<slide_id>.npz), made from a version 2 index's own data."""
    catalog = Catalog(v2)
    identity = json.loads((v2 / "index.json").read_text())
    v1.mkdir()
    records = catalog.slides.to_pylist()
    features = v1 / "features"
    features.mkdir()
    seg = SegmentFiles(catalog.snapshot.segment_dirs()[0])
    patches = seg.table("patches")
    for r in records:
        start = int(np.searchsorted(patches.column("patch_row").to_numpy(), r["patch_row_start"]))
        part = patches.slice(start, r["n_patches"])
        record = {k: r[k] for k in ("slide_id", "path", "sha256", "size_bytes", "mtime_ns", "vendor", "width", "height",
                                     "mpp", "mpp_source", "magnification", "status", "error")}
        with open(features / f"{r['slide_id']}.npz", "wb") as fh:
            np.savez(fh, coords=np.stack([part["x"].to_numpy(), part["y"].to_numpy()], 1),
                     features=seg.features[start:start + len(part)], patch_size=np.int64(r["patch_size"]),
                     record=np.frombuffer(json.dumps(record).encode(), np.uint8))
    user = [c for c in ("label", "patient_id") if c in catalog.slides.column_names]
    pq.write_table(catalog.slides.select(["slide_row", "slide_id", "path", "sha256", "size_bytes", "mtime_ns", "vendor",
                                          "width", "height", "mpp", "mpp_source", "magnification", "n_patches",
                                          "patch_row_start", "patch_size", "status", "error", "entropy", "max_mass", *user]),
                   v1 / "slides.parquet")
    pq.write_table(pa.table({"slide_id": catalog.slides["slide_id"], "label": catalog.slides["label"],
                             "slide_key": catalog.slides["slide_id"]}), v1 / "metadata.parquet")
    shutil.copy(v2 / "prototypes.parquet", v1 / "prototypes.parquet")
    manifest = {**{k: identity[k] for k in ("encoder", "tiling", "bank", "max_index_memory", "features_imported")},
                "schema_version": 1, "aggregation": {**identity["aggregation"], "chunk": 8192},
                "created": identity["created"], "counts": {}, "indexes": {}}
    (v1 / "manifest.json").write_text(json.dumps(manifest))


def test_a_version_1_index_migrates_without_encoding_to_the_same_answers(tmp_path, run_cli, monkeypatch):
    folder, v2 = slides(tmp_path / "s"), tmp_path / "v2"
    csv = tmp_path / "m.csv"
    csv.write_text("slide_id,label\nA,x\nB,y\nC,z\n")
    run_index([folder], v2, CONFIG, metadata_csv=csv, show_progress=False)
    v1 = tmp_path / "v1"
    write_v1(v2, v1)
    refused = run_cli("search", "slide", v1, "A")
    assert refused.exit_code == 2 and "slidesearch migrate" in refused.stderr
    import indexer.models.encoders

    monkeypatch.setattr(indexer.models.encoders, "load_encoder", lambda *a, **k: pytest.fail("migration encoded something"))
    result = run_cli("migrate", v1)
    assert result.exit_code == 0, result.output
    assert not (v1 / "manifest.json").exists() and not (v1 / "features").exists()
    before, after = SlideSearcher(v2), SlideSearcher(v1)
    for slide_id in "ABC":
        assert ([(h.slide_id, round(h.score, 5)) for h in before.search_slide(slide_id, 3).hits]
                == [(h.slide_id, round(h.score, 5)) for h in after.search_slide(slide_id, 3).hits])
    assert {s: r["label"] for s, r in live(v1).items()} == {"A": "x", "B": "y", "C": "z"}
    rows = np.array(sorted(r["slide_row"] for r in live(v1).values()))
    np.testing.assert_allclose(reconstruct(Catalog(v1).faiss("slides"), rows),
                               reconstruct(Catalog(v2).faiss("slides"), rows), atol=1e-6)
    assert run_cli("migrate", v1).exit_code == 0  # a second run finds nothing left to do


@pytest.mark.parametrize("slide_id", ["../../victim", "/etc/passwd", "a/b", "a\\b", "x\x00y", "..", "S" * 5000,
                                      "../../victim@0,0,64,64"])
def test_slide_ids_never_reach_outside_the_index(tmp_path, run_cli, slide_id):
    folder, out = slides(tmp_path / "s", ("A",), ("tumour",)), tmp_path / "deep" / "idx"
    assert run_cli("index", folder, "--out", out, *FAST).exit_code == 0
    victim = tmp_path / "victim.npz"
    victim.write_bytes(b"keep")
    (tmp_path / "deep" / "victim.npz").write_bytes(b"keep")
    before = sorted(p for p in tmp_path.rglob("*"))
    for args in (("remove", out, slide_id), ("search", "slide", out, slide_id), ("search", "patch", out, slide_id)):
        result = run_cli(*args)
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, (args, result.output)
    assert victim.read_bytes() == b"keep" and sorted(p for p in tmp_path.rglob("*")) == before


def test_a_file_with_an_indexed_slide_id_under_another_path_is_refused(tmp_path, run_cli):
    folder, out = slides(tmp_path / "s", ("A",), ("tumour",)), tmp_path / "idx"
    assert run_cli("index", folder, "--out", out, *FAST).exit_code == 0
    other = slides(tmp_path / "other", ("A",), ("mucin",))
    result = run_cli("index", other, "--out", out, *FAST)
    assert result.exit_code == 3 and "already indexed from" in result.stdout
    assert live(out)["A"]["path"] == str((folder / "A.tif").resolve())


def test_a_slide_that_fails_to_reread_keeps_its_committed_data(tmp_path, run_cli):
    folder, out = slides(tmp_path / "s", ("A", "B"), ("tumour", "mucin")), tmp_path / "idx"
    assert run_cli("index", folder, "--out", out, *FAST).exit_code == 0
    kept = live(out)["A"]
    (folder / "A.tif").write_bytes(b"II*\x00" + b"\x00" * 4000)  # the same file, now unreadable
    result = run_cli("index", folder, "--out", out, *FAST)
    assert result.exit_code == 3
    assert live(out)["A"] == kept and len(SlideSearcher(out).search_slide("A", 2).hits) == 2


def test_permission_denied_on_the_index_is_one_line_and_keeps_the_last_version(tmp_path, run_cli, monkeypatch):
    out = tmp_path / "idx"
    assert run_cli("index", slides(tmp_path / "first", ("Z",), ("stroma",)), "--out", out, *FAST).exit_code == 0
    before = live(out)
    import indexer.store.atomic

    def denied(src, dst):  # what a read-only mount or a foreign owner gives (root ignores chmod, so it is simulated)
        raise PermissionError(13, "Permission denied", str(dst))

    folder = slides(tmp_path / "s", ("A",), ("tumour",))
    monkeypatch.setattr(indexer.store.atomic.os, "replace", denied)
    result = run_cli("index", folder, "--out", out, *FAST)
    monkeypatch.undo()
    assert result.exit_code != 0 and result.stderr.count("\n") == 1 and "Permission denied" in result.stderr
    assert live(out) == before


def test_disk_full_stops_the_run_with_one_line_and_keeps_the_last_version(tmp_path, run_cli, monkeypatch):
    folder, out = slides(tmp_path / "s", ("A", "B"), ("tumour", "mucin")), tmp_path / "idx"
    assert run_cli("index", slides(tmp_path / "first", ("Z",), ("stroma",)), "--out", out, *FAST).exit_code == 0
    before = live(out)
    import indexer.store.staging

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device", str(out / "staging"))

    monkeypatch.setattr(indexer.store.staging.np, "savez", full)
    result = run_cli("index", folder, "--out", out, *FAST)
    assert result.exit_code != 0 and result.stderr.count("\n") == 1 and "No space left" in result.stderr
    monkeypatch.undo()
    assert live(out) == before and not list(out.rglob("*.tmp"))


def stopped(pid: int) -> bool:
    """Whether process ``pid`` is stopped (state T in /proc/<pid>/stat)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "T"
    except OSError:
        return False


def test_an_interrupt_stops_the_run_with_one_line_at_the_last_version(tmp_path):
    import signal
    import time

    out = tmp_path / "idx"
    first = subprocess.run([sys.executable, "-c", RUN, "index", str(slides(tmp_path / "first", ("Z",), ("stroma",))),
                            "--out", str(out), *FAST], capture_output=True, timeout=300)
    assert first.returncode == 0
    before = live(out)
    folder = slides(tmp_path / "s", ("A", "B", "C", "D", "E", "F"), ("tumour", "mucin") * 3)
    env = {**os.environ, "SLIDESEARCH_CRASH_AT": "staging.done:STOP"}  # stops itself once its first slide is staged
    proc = subprocess.Popen([sys.executable, "-c", RUN, "index", str(folder), "--out", str(out), *FAST],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 240
    while not stopped(proc.pid) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert stopped(proc.pid), "the run never reached its first staged slide"
    assert list((out / "staging").glob("*.npz"))  # interrupted mid-run: a slide staged, not committed
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGCONT)  # the SIGINT is handled as it resumes
    err = proc.communicate(timeout=120)[1]
    assert proc.returncode == 130 and err.count("\n") == 1 and "interrupted" in err, err
    assert live(out) == before  # nothing of the interrupted run is visible, nothing indexed is lost


def test_multi_dot_names_and_text_ids_match_the_metadata(tmp_path, run_cli):
    folder = tmp_path / "s"
    folder.mkdir()
    write_slide(folder / "A.ome.tiff", SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, "tumour"),), seed=0))
    csv = tmp_path / "m.csv"
    csv.write_text("filename,patient_id\nA.ome.tiff,007\n")
    result = run_cli("index", folder, "--out", tmp_path / "idx", "--metadata", csv, *FAST)
    assert result.exit_code == 0, result.output
    assert live(tmp_path / "idx")["A"]["patient_id"] == "007" and "1 rows matched" in result.stdout
