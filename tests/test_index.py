"""`slidesearch index`: cohort with a broken slide, resume after SIGKILL, skip/append/change/remove, h5 import."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from benchmarks.fixtures import planted  # noqa: F401  (registers the planted encoder used below)
from indexer.ingestion.run import IndexConfig, run_index
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_cohort, write_slide
from indexer.tiles.tiling import TilingConfig
from indexer.vectors import reconstruct
from retrieval.query.catalog import Catalog, index_info
from retrieval.cli import app
from assertions import one_error_line

SHARED_BROKEN = Path(__file__).resolve().parents[1].parent / "shared/data/slides/broken.svs"
FAST = ["--mag", "10", "--patch", "64", "--workers", "0", "--quiet"]
TINY = ["--model", "tiny"]  # `index` names its encoder (tiny: random weights, for tests)
FAST_TILING = TilingConfig(magnification=10, patch_px=64)


def slides_of(index_dir: Path) -> list[dict]:
    """The live slides (with metadata) of an index's current version."""
    return Catalog(index_dir).slides.to_pylist()


def slide_vectors(index_dir: Path, name: str = "slides") -> dict[str, np.ndarray]:
    """slide_id → stored vector, read back from the FAISS indexes by explicit slide_row id."""
    catalog = Catalog(index_dir)
    ok = [s for s in catalog.slides.to_pylist() if s["status"] == "ok"]
    vectors = reconstruct(catalog.faiss(name), np.array([s["slide_row"] for s in ok], np.int64))
    return {s["slide_id"]: v for s, v in zip(ok, vectors)}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> tuple[Path, Path]:
    """20 generated slides (10 patients × 2) with metadata."""
    folder = tmp_path_factory.mktemp("cohort")
    csv = write_cohort(folder, n_patients=10, slides_per_patient=2, size=(1536, 1536), seed=3)
    return folder, csv


def test_cohort_with_broken_slides_exits_3_and_lists_them(cohort, tmp_path):
    folder, csv = cohort
    broken = tmp_path / "corrupt.svs"
    broken.write_bytes(b"II*\x00" + os.urandom(600))
    extra = [str(broken)] + ([str(SHARED_BROKEN)] if SHARED_BROKEN.is_file() else [])
    out = tmp_path / "idx"
    result = CliRunner().invoke(app, ["index", str(folder), *extra, "--out", str(out), "--metadata", str(csv), *TINY, *FAST])
    assert result.exit_code == 3, result.output
    assert "failed corrupt" in result.output.replace("\n", " ")
    slides = slides_of(out)
    ok = {s["slide_id"] for s in slides if s["status"] == "ok"}
    assert ok == {p.stem for p in folder.glob("*.tif")} and len(ok) == 20
    failed = {s["slide_id"]: s["error"] for s in slides if s["status"] != "ok"}
    assert set(failed) == {"corrupt"} | ({"broken"} if SHARED_BROKEN.is_file() else set())
    assert all(failed.values())
    assert all(s["label"] for s in slides if s["status"] == "ok")  # metadata joined by slide_id
    info = CliRunner().invoke(app, ["info", str(out), "--json"])
    assert info.exit_code == 0
    data = json.loads(info.stdout)
    assert data["counts"]["slides_ok"] == 20 and {f["slide_id"] for f in data["failed"]} == set(failed)
    assert set(data["indexes"]) == {"slides", "slides_mean", "subvectors", "patches"}
    assert data["indexes"]["patches"]["count"] == sum(s["n_patches"] for s in slides if s["status"] == "ok")


def _run_cli(args: list[str]) -> subprocess.Popen:
    code = "import sys; sys.argv = ['slidesearch', *sys.argv[1:]]; from retrieval.cli import main; main()"
    return subprocess.Popen([sys.executable, "-c", code, *args], start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("workers", ["0", "2"])
def test_sigkill_mid_run_then_rerun_equals_uninterrupted_run(tmp_path, workers):
    """Also with reader processes, which die with the run (the group is killed) and stage nothing themselves."""
    folder = tmp_path / "slides"
    write_cohort(folder, n_patients=4, slides_per_patient=2, size=(2048, 2048), seed=5)
    args = ["index", str(folder), "--model", "tiny", *FAST, "--workers", workers]
    reference = tmp_path / "reference"
    assert _run_cli([*args, "--out", str(reference)]).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    proc = _run_cli([*args, "--out", str(killed)])
    deadline = time.time() + 240
    while not list((killed / "staging").glob("*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    staged = len(list((killed / "staging").glob("*.npz")))
    assert 1 <= staged < 8 and not (killed / "CURRENT").exists(), "the kill must land mid-way"

    assert _run_cli([*args, "--out", str(killed)]).wait(timeout=300) == 0
    for name in ("slides", "slides_mean"):
        ref, got = slide_vectors(reference, name), slide_vectors(killed, name)
        assert set(ref) == set(got) and len(ref) == 8
        for slide_id in ref:
            if workers == "0":
                np.testing.assert_array_equal(ref[slide_id], got[slide_id])
            else:  # the reader pool fills encoder batches as patches arrive: the batch shape moves the last bits
                np.testing.assert_allclose(ref[slide_id], got[slide_id], rtol=0, atol=1e-5)
    columns = ("slide_id", "slide_row", "n_patches", "patch_row_start")
    assert [[s[c] for c in columns] for s in slides_of(reference)] == [[s[c] for c in columns] for s in slides_of(killed)]
    assert not list(killed.rglob(".*.tmp")) and not list((killed / "staging").iterdir())


def _small_slide(path: Path, tissue: str, seed: int) -> Path:
    return write_slide(path, SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, tissue),), seed=seed))


def test_rerun_skips_append_adds_change_reindexes_remove_deletes(tmp_path, monkeypatch):
    folder = tmp_path / "slides"
    folder.mkdir()
    for i, tissue in enumerate(["tumour", "necrosis", "mucin"]):
        _small_slide(folder / f"A{i}.tif", tissue, i)
    out = tmp_path / "idx"
    config = IndexConfig(model="tiny", tiling=FAST_TILING, num_workers=0)
    first = run_index([folder], out, config, show_progress=False)
    assert sorted(first.indexed) == ["A0", "A1", "A2"] and first.patches_encoded > 0
    before = slide_vectors(out)

    import indexer.ingestion.embedding

    def no_encoding(*args, **kwargs):
        raise AssertionError("an unchanged slide was encoded again")

    monkeypatch.setattr(indexer.ingestion.embedding, "iter_slide_embeddings", no_encoding)
    again = run_index([folder], out, config, show_progress=False)
    assert again.indexed == [] and again.patches_encoded == 0 and sorted(again.skipped) == ["A0", "A1", "A2"]
    monkeypatch.undo()

    _small_slide(folder / "A3.tif", "lymphocytes", 3)
    os.utime(folder / "A1.tif", ns=(1, 1))  # same content, new mtime: hashed, still skipped
    appended = run_index([folder], out, config, show_progress=False)
    assert appended.indexed == ["A3"] and sorted(appended.skipped) == ["A0", "A1", "A2"]
    rows = {r["slide_id"]: r["slide_row"] for r in slides_of(out)}
    assert [rows[f"A{i}"] for i in range(4)] == [0, 1, 2, 3]

    _small_slide(folder / "A0.tif", "adipose", 9)  # changed content: a new row replaces the old one
    changed = run_index([folder], out, config, show_progress=False)
    assert changed.indexed == ["A0"]
    after = slide_vectors(out)
    assert not np.allclose(after["A0"], before["A0"]) and np.array_equal(after["A2"], before["A2"])
    assert {r["slide_id"]: r["slide_row"] for r in slides_of(out)} == {"A0": 4, "A1": 1, "A2": 2, "A3": 3}

    result = CliRunner().invoke(app, ["remove", str(out), "A1", "A2"])
    assert result.exit_code == 0, result.output
    assert set(slide_vectors(out)) == {"A0", "A3"}
    assert index_info(out)["counts"]["patches"] == sum(r["n_patches"] for r in slides_of(out))
    missing = CliRunner().invoke(app, ["remove", str(out), "nope"])
    assert missing.exit_code == 2 and "nope" in one_error_line(missing)


def test_index_built_with_another_encoder_or_bank_is_refused(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    _small_slide(folder / "B0.tif", "tumour", 0)
    out = tmp_path / "idx"
    assert CliRunner().invoke(app, ["index", str(folder), "--out", str(out), *TINY, *FAST]).exit_code == 0
    snapshot = {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    csv = tmp_path / "meta.csv"
    csv.write_text("slide_id,label\nB0,changed\n")
    other_model = CliRunner().invoke(
        app, ["index", str(folder), "--out", str(out), "--model", "planted", "--metadata", str(csv), *FAST])
    assert other_model.exit_code == 2 and "built with encoder tiny" in one_error_line(other_model)
    other_bank = CliRunner().invoke(app, ["index", str(folder), "--out", str(out), "--bank", "lung", *TINY, *FAST])
    assert other_bank.exit_code == 2 and "bank" in one_error_line(other_bank)
    assert {p.name: p.read_bytes() for p in out.rglob("*") if p.is_file()} == snapshot  # nothing indexed is lost


@pytest.mark.parametrize("args, message", [
    (["/no/such/slide.svs"], "no such file"),
    (["{folder}", "--model", "no-such-model"], "unknown model"),
    (["{folder}", "--metadata", "{folder}/B0.tif"], "metadata"),
    (["{folder}", "--bank", "no-such-bank"], "unknown bank"),
    (["{folder}", "--max-index-memory", "lots"], "memory size"),
])
def test_bad_index_input_is_one_line(tmp_path, args, message):
    folder = tmp_path / "slides"
    folder.mkdir()
    _small_slide(folder / "B0.tif", "tumour", 0)
    args = [a.format(folder=folder) for a in args]
    result = CliRunner().invoke(app, ["index", *TINY, *args, "--out", str(tmp_path / "idx"), *FAST])
    assert result.exit_code == 2
    assert message in one_error_line(result).lower()
    assert not (tmp_path / "idx").exists()  # refused before anything was written


def test_trident_h5_import_gives_the_same_slide_vectors(tmp_path):
    import h5py

    from indexer.ingestion.embedding import embed_slide
    from indexer.models.encoders import load_encoder
    from indexer.slides import open_slide
    from indexer.tiles.tiling import tile_slide

    folder = tmp_path / "slides"
    folder.mkdir()
    for i, tissue in enumerate(["tumour", "mucin"]):
        _small_slide(folder / f"H{i}.tif", tissue, i)
    config = IndexConfig(model="tiny", tiling=FAST_TILING, num_workers=0)
    run_index([folder], tmp_path / "encoded", config, show_progress=False)

    encoder = load_encoder("tiny")
    features = tmp_path / "h5"
    features.mkdir()
    for path in sorted(folder.glob("*.tif")):
        with open_slide(path) as slide:
            grid = tile_slide(slide, FAST_TILING)
        with h5py.File(features / f"{path.stem}.h5", "w") as h5:
            h5.create_dataset("features", data=embed_slide(path, grid, encoder, num_workers=0))
            coords = h5.create_dataset("coords", data=grid.coords)
            coords.attrs["patch_size_level0"] = grid.size
    import dataclasses

    run_index([folder], tmp_path / "imported", dataclasses.replace(config, features_dir=str(features)), show_progress=False)
    encoded, imported = slide_vectors(tmp_path / "encoded"), slide_vectors(tmp_path / "imported")
    assert set(encoded) == set(imported) == {"H0", "H1"}
    for slide_id in encoded:
        np.testing.assert_allclose(imported[slide_id], encoded[slide_id], atol=2e-3)
    identity = json.loads((tmp_path / "imported" / "index.json").read_text())
    assert identity["features_imported"] is True


def test_version_records_index_choice_and_stage_timings(tmp_path):
    folder = tmp_path / "slides"
    folder.mkdir()
    _small_slide(folder / "M0.tif", "stroma", 0)
    out = tmp_path / "idx"
    run_index([folder], out, IndexConfig(model="tiny", tiling=FAST_TILING, num_workers=0), show_progress=False)
    info = index_info(out)
    assert info["schema_version"] == 2 and info["encoder"]["name"] == "tiny" and info["version"] == 1
    assert info["bank"]["name"] == "general" and info["bank"]["K"] >= 16
    assert all(entry["factory"] == "Flat" and entry["recall_at_10"] == 1.0 for entry in info["indexes"].values())
    assert {"load model", "open", "tissue", "tile", "embed", "aggregate", "tables", "faiss"} <= set(info["timings"])
    assert not list((out / "staging").iterdir())  # a commit takes its slides out of staging
    assert CliRunner().invoke(app, ["info", str(out)]).exit_code == 0


def test_memory_budget_switches_to_approximate_indexes_with_measured_recall(cohort, tmp_path):
    folder, csv = cohort
    out = tmp_path / "idx"
    result = CliRunner().invoke(app, ["index", str(folder), "--out", str(out), "--metadata", str(csv),
                                      "--max-index-memory", "200KB", *TINY, *FAST])
    assert result.exit_code == 0, result.output
    entries = index_info(out)["indexes"]
    assert entries["patches"]["kind"] == "ivf_pq" and entries["patches"]["nbytes"] < 200 * 1024
    assert 0.0 < entries["patches"]["recall_at_10"] < 1.0  # measured against exact search, not assumed
    hits = CliRunner().invoke(app, ["search", "slide", str(out), "P000-S1", "-k", "3", "--json"])
    assert hits.exit_code == 0, hits.output
    found = [h["slide_id"] for h in json.loads(hits.stdout)["hits"]]
    assert len(found) == 3 and set(found) <= {p.stem for p in folder.glob("*.tif")}  # approximate, so no rank check
