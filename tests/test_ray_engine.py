"""The Ray engine (issue 15) on a real local Ray cluster: the same index as the local engine, a killed actor's
slides sent again and indexed once, a killed driver resumed without encoding again, Ray missing."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import hostile
from indexer.engines import ray_engine
from indexer.engines.ray_engine import SlideEncoder
from indexer.errors import UserError
from indexer.ingestion.config import IndexConfig
from indexer.ingestion.run import run_index
from indexer.store.segments import SegmentFiles
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide
from indexer.tiles.tiling import TilingConfig
from indexer.vectors import reconstruct
from retrieval.query.catalog import Catalog

ray = pytest.importorskip("ray")

LOCAL = IndexConfig(model="tiny", tiling=TilingConfig(magnification=10, patch_px=64), num_workers=0)
RAY = dataclasses.replace(LOCAL, engine="ray", actors=2)
FAST = ["--mag", "10", "--patch", "64", "--workers", "0", "--quiet", "--model", "tiny"]
CLI = "import sys; sys.argv = ['slidesearch', *sys.argv[1:]]; from retrieval.cli import main; main()"
TISSUES = ("tumour", "necrosis", "mucin", "stroma", "lymphocytes", "adipose")
GOOD = [f"S{i:02d}" for i in range(10)]
FLOAT16 = 2.0 ** -10  # float16 machine epsilon: relative rounding of a stored feature


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster of 2 CPUs for the module; its GCS address."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="error",
             object_store_memory=100 * 2**20)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    """Ten synthetic slides of two tissues each and one hostile one (a TIFF whose header lies about its size)."""
    folder = tmp_path_factory.mktemp("ray-cohort")
    for i, name in enumerate(GOOD):
        a, b = TISSUES[i % 6], TISSUES[(i + 2) % 6]
        write_slide(folder / f"{name}.tif", SyntheticSlideSpec(
            1024, 1024, (Region(0, 0, 1024, 512, a), Region(0, 512, 1024, 1024, b)), seed=i))
    hostile.claiming_tiff(folder / "bad.tif")
    return folder


def copy_of(cohort: Path, where: Path) -> Path:
    """A private copy of the cohort (tests that change files or kill runs get their own)."""
    where.mkdir(parents=True)
    for path in cohort.iterdir():
        (where / path.name).write_bytes(path.read_bytes())
    return where


def encoder_processes(busy: bool = False) -> list[int]:
    """Pids of the encoder actors alive on this machine (Ray titles them ``ray::SlideEncoder``, and
    ``ray::SlideEncoder.encode`` while one encodes a slide)."""
    title = b"ray::SlideEncoder.encode" if busy else b"ray::SlideEncoder"
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(title):
                pids.append(int(entry.name))
        except OSError:
            continue
    return pids


def wait_until(condition, timeout: float = 120.0, what: str = "") -> None:
    end = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def segment_rows(out: Path) -> dict[str, dict]:
    """slide_id → its slide record, patch columns and features, read from every live segment."""
    catalog = Catalog(out)
    records = {r["slide_id"]: r for r in catalog.slides.to_pylist()}
    assert len(records) == catalog.slides.num_rows  # each slide once
    rows = {}
    for folder in catalog.snapshot.segment_dirs():
        seg = SegmentFiles(folder)
        patches = {k: v.to_numpy() for k, v in zip(seg.table("patches").column_names, seg.table("patches").columns)}
        for r in seg.table("slides").to_pylist():
            mine = patches["slide_row"] == r["slide_row"]
            rows[r["slide_id"]] = {"record": records[r["slide_id"]],
                                   "patches": {k: patches[k][mine] for k in ("patch_row", "x", "y", "size")},
                                   "features": np.asarray(seg.features[np.flatnonzero(mine)], np.float32)}
    return rows


def test_ray_and_local_engines_give_the_same_rows_vectors_and_failures(cluster, cohort, tmp_path):
    wait_until(lambda: not encoder_processes(), what="earlier actors to end")
    local = run_index([cohort], tmp_path / "local", LOCAL, show_progress=False)
    remote = run_index([cohort], tmp_path / "ray", RAY, show_progress=False)
    assert sorted(remote.indexed) == sorted(local.indexed) == GOOD
    assert remote.failed == local.failed and list(local.failed) == ["bad"]
    assert "past the end of the 4,300-byte file" in local.failed["bad"]
    assert any("2 encoder actor(s)" in n for n in remote.notes)
    a, b = segment_rows(tmp_path / "local"), segment_rows(tmp_path / "ray")
    assert sorted(a) == sorted(b) == sorted(GOOD + ["bad"])
    floats = {"entropy", "max_mass"}
    for slide_id in a:
        ra, rb = a[slide_id]["record"], b[slide_id]["record"]
        assert {k: v for k, v in ra.items() if k not in floats} == {k: v for k, v in rb.items() if k not in floats}
        for key in floats & {k for k, v in ra.items() if v is not None}:
            assert rb[key] == pytest.approx(ra[key], rel=1e-2, abs=1e-3)
        for column, values in a[slide_id]["patches"].items():
            np.testing.assert_array_equal(values, b[slide_id]["patches"][column])
        np.testing.assert_allclose(a[slide_id]["features"], b[slide_id]["features"], rtol=FLOAT16, atol=FLOAT16 / 16)
    rows = np.asarray([a[s]["record"]["slide_row"] for s in GOOD], np.int64)
    for name in ("slides", "slides_mean"):
        np.testing.assert_allclose(reconstruct(Catalog(tmp_path / "ray").faiss(name), rows),
                                   reconstruct(Catalog(tmp_path / "local").faiss(name), rows), rtol=1e-2, atol=1e-3)
    failed = [r for r in Catalog(tmp_path / "ray").slides.to_pylist() if r["status"] == "error"]
    assert [(r["slide_id"], r["error"]) for r in failed] == [("bad", local.failed["bad"])]


def test_a_killed_actor_s_slides_are_sent_again_and_every_good_slide_is_indexed_once(cluster, cohort, tmp_path):
    wait_until(lambda: not encoder_processes(), what="earlier actors to end")
    folder, out = copy_of(cohort, tmp_path / "slides"), tmp_path / "idx"
    config = dataclasses.replace(RAY, commit_every=3)
    done: dict = {}
    runner = threading.Thread(target=lambda: done.setdefault("report", run_index([folder], out, config,
                                                                                  show_progress=False)))
    runner.start()
    wait_until(lambda: (out / "CURRENT").is_file(), what="the first commit")
    searchable = Catalog(out).slides.num_rows  # a version is committed and readable while the run goes on
    wait_until(lambda: encoder_processes(busy=True) or not runner.is_alive(), what="an actor encoding a slide")
    victims = encoder_processes(busy=True)
    assert victims, "the run ended before an actor could be killed"
    os.kill(victims[0], signal.SIGKILL)
    runner.join(timeout=300)
    report = done["report"]
    assert searchable >= 3 and not runner.is_alive()
    assert any(n.startswith("ray: sent again after their worker died") for n in report.notes), report.notes
    assert sorted(report.indexed) == GOOD and list(report.failed) == ["bad"]
    rows = segment_rows(out)
    assert sorted(rows) == sorted(GOOD + ["bad"])  # each once: segment_rows checks every id is unique
    counts = Catalog(out).manifest["counts"]
    assert counts["tombstoned"] == 0 and counts["slides_ok"] == len(GOOD)
    assert counts["patches"] == sum(len(r["patches"]["x"]) for r in rows.values())
    assert not list((out / "staging").glob("*.npz"))
    assert victims[0] not in encoder_processes()


def test_a_killed_driver_resumes_without_encoding_a_committed_or_staged_slide_again(cluster, cohort, tmp_path):
    wait_until(lambda: not encoder_processes(), what="earlier actors to end")
    folder, out = copy_of(cohort, tmp_path / "slides"), tmp_path / "idx"
    env = {**os.environ, "SLIDESEARCH_CRASH_AT": "commit.version#2"}  # SIGKILL the driver in its second commit
    killed = subprocess.run([sys.executable, "-c", CLI, "index", str(folder), "--out", str(out), *FAST,
                             "--engine", "ray", "--address", cluster, "--actors", "2", "--commit-every", "2"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr
    wait_until(lambda: not encoder_processes(), what="the dead driver's actors to end")
    committed = {r["slide_id"] for r in Catalog(out).slides.to_pylist()}
    staged = {json.loads(np.load(p)["record"].tobytes())["slide_id"] for p in (out / "staging").glob("*.npz")}
    assert committed and staged and not committed & staged
    # Garble every committed and staged slide, keeping its size and mtime: reading one again would fail it.
    for slide_id in (committed | staged) - {"bad"}:
        path = folder / f"{slide_id}.tif"
        stat = path.stat()
        path.write_bytes(b"\0" * stat.st_size)
        os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = run_index([folder], out, RAY, show_progress=False)
    assert set(again.skipped) == committed - {"bad"} and set(again.resumed) == staged
    assert set(again.indexed) == set(GOOD) - committed - staged
    assert list(again.failed) == ["bad"]  # a garbled slide read again would fail here too
    final = {r["slide_id"]: r["status"] for r in Catalog(out).slides.to_pylist()}
    assert final == {**{s: "ok" for s in GOOD}, "bad": "error"}


POISON = "S03"


class PoisonEncoder(SlideEncoder):
    """An encoder actor whose process dies whenever it is given slide POISON (a reader that segfaults on it)."""

    def encode(self, job):
        if job.slide_id == POISON:
            os._exit(1)
        return super().encode(job)


def test_a_slide_that_kills_its_worker_every_time_fails_as_itself_and_the_run_goes_on(cluster, cohort, tmp_path,
                                                                                       monkeypatch):
    wait_until(lambda: not encoder_processes(), what="earlier actors to end")
    folder = tmp_path / "slides"
    folder.mkdir()
    for name in GOOD[:4]:
        (folder / f"{name}.tif").write_bytes((cohort / f"{name}.tif").read_bytes())
    monkeypatch.setattr(ray_engine, "SlideEncoder", PoisonEncoder)
    here = sys.modules[__name__]
    ray.cloudpickle.register_pickle_by_value(here)  # the workers cannot import this test module
    try:
        report = run_index([folder], tmp_path / "idx", RAY, show_progress=False)
    finally:
        ray.cloudpickle.unregister_pickle_by_value(here)
    assert sorted(report.indexed) == [s for s in GOOD[:4] if s != POISON]
    assert list(report.failed) == [POISON]
    assert report.failed[POISON].startswith(f"its worker died {ray_engine.MAX_ATTEMPTS} times while encoding it")
    recorded = {r["slide_id"]: r for r in Catalog(tmp_path / "idx").slides.to_pylist()}
    assert recorded[POISON]["status"] == "error" and recorded[POISON]["error"] == report.failed[POISON]


def test_missing_ray_is_one_line_naming_the_extra(cohort, tmp_path):
    code = "import sys; sys.modules['ray'] = None\n" + CLI.replace("; ", "\n")
    out = tmp_path / "idx"
    result = subprocess.run([sys.executable, "-c", code, "index", str(cohort), "--out", str(out), *FAST,
                             "--engine", "ray"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: the Ray engine needs Ray; install it with: "
                                                  "pip install 'slidesearch[ray]'"]
    assert not out.exists()


def test_more_actors_than_the_cluster_holds_is_refused_before_any_write(cluster, cohort, tmp_path):
    with pytest.raises(UserError, match="--actors 5: each CPU encoder actor takes 1 CPU"):
        run_index([cohort], tmp_path / "idx", dataclasses.replace(RAY, actors=5), show_progress=False)
    assert not (tmp_path / "idx").exists()


def test_commit_minutes_commits_slides_that_waited_long_enough(cohort, tmp_path):
    folder = tmp_path / "three"
    folder.mkdir()
    for name in GOOD[:3]:
        (folder / f"{name}.tif").write_bytes((cohort / f"{name}.tif").read_bytes())
    report = run_index([folder], tmp_path / "idx", dataclasses.replace(LOCAL, commit_minutes=1e-9),
                       show_progress=False)
    assert report.version == 3 and report.counts["slides_ok"] == 3  # one version per slide
