"""Ingest at the machine's limit (issue 26): the fast path (reader pool for the run, direct tiles, uint8 patches,
batched preprocessing) gives the embeddings of the path before it, keeps its behaviour on bad input, and its
readers are well-behaved processes."""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import openslide
import pytest
import torch
from PIL import Image

from indexer.ingestion.embedding import embed_slide
from indexer.models.encoders import load_encoder
from indexer.ingestion.config import IndexConfig
from indexer.ingestion.run import run_index
from indexer.ingestion.prepare import PrepareOptions, prepare_slide
from indexer.ingestion.readers import PrepareTask, ReaderPool, resolve_workers
from indexer.slides import open_slide
from indexer.store.segments import SegmentFiles
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_png_slide, write_slide
from retrieval.demo.dicom import write_dicom_slide
from indexer.tiles.tiling import TileGrid, TilingConfig
from retrieval.query.catalog import Catalog

BATCH_ATOL = 1e-5  # a patch encoded alone or in another batch (fp32, CPU) agrees to rounding
FLOAT16 = 2.0 ** -10  # float16 relative rounding: stored features
LAYOUT = (Region(0, 0, 1100, 2048, "tumour"), Region(1100, 0, 2048, 2048, "necrosis"))
REAL_SVS = "tcga-cr-7395-01a-01-ts1.svs"


def reference_patch(path: Path, level: int, read_px: int, patch_px: int, x: int, y: int) -> Image.Image:
    """The patch as the path before issue 26 read it: OpenSlide's ``read_region`` composited on white (DICOM and
    plain images through their own readers, which it did not change), resized bilinear to ``patch_px``."""
    try:
        osr = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError, IsADirectoryError):
        with open_slide(path, require_mpp=False) as slide:
            image = slide.read_region((x, y), level, (read_px, read_px))
    else:
        with osr:
            rgba = osr.read_region((x, y), level, (read_px, read_px))
        image = Image.new("RGB", rgba.size, (255, 255, 255))
        image.paste(rgba, mask=rgba.getchannel("A"))
    if read_px != patch_px:
        image = image.resize((patch_px, patch_px), Image.Resampling.BILINEAR, reducing_gap=None)
    return image


def reference_embeddings(path: Path, grid: TileGrid, encoder) -> np.ndarray:
    """The model's own transform on each PIL patch, then ``encode_images``."""
    pixels = torch.stack([encoder.preprocess(reference_patch(path, grid.level, grid.read_px, grid.patch_px, int(x), int(y)))
                          for x, y in grid.coords])
    return encoder.encode_images(pixels)


@pytest.fixture(scope="module")
def slides(tmp_path_factory, shared_slides_or_none) -> dict[str, tuple[Path, float | None, TilingConfig]]:
    """Each kind of input: (path, MPP override, tiling)."""
    folder = tmp_path_factory.mktemp("ingest")
    spec = SyntheticSlideSpec(2048, 2048, LAYOUT, mpp=0.25, seed=2)
    out = {
        "JPEG SVS, 20x from level 1": (write_slide(folder / "jpeg.svs", dataclasses.replace(
            spec, fmt="svs", compression="jpeg")), None, TilingConfig()),
        "zlib TIFF at 0.3 µm/px (read 373 px, resized)": (write_slide(folder / "odd.tif", dataclasses.replace(
            spec, mpp=0.3)), None, TilingConfig()),
        "DICOM-WSI folder": (write_dicom_slide(folder / "dicom", dataclasses.replace(spec, width=1536, height=1536)),
                             None, TilingConfig()),
        "PNG": (write_png_slide(folder / "plain.png", dataclasses.replace(spec, width=1024, height=1024, mpp=0.5)),
                None, TilingConfig()),
    }
    if shared_slides_or_none is not None and (shared_slides_or_none / REAL_SVS).is_file():
        real = shared_slides_or_none / REAL_SVS
        out["real SVS (JPEG 2000), 20x from level 0"] = (real, 0.5, TilingConfig())
        out["real SVS, 10x from level 1 (off whole pixels: OpenSlide)"] = (real, 0.5, TilingConfig(magnification=10))
    return out


@pytest.fixture(scope="module")
def shared_slides_or_none() -> Path | None:
    folder = Path(__file__).resolve().parents[1].parent / "shared/data/slides"
    return folder if folder.is_dir() else None


def grid_of(path: Path, mpp: float | None, tiling: TilingConfig, limit: int) -> TileGrid:
    grid = prepare_slide(path, {"slide_id": "x"}, PrepareOptions(tiling), mpp, hash_file=False).grid
    keep = np.linspace(0, len(grid) - 1, min(limit, len(grid))).astype(int)
    return dataclasses.replace(grid, coords=grid.coords[keep])


@pytest.mark.parametrize("model", ["tiny", "openclip:ViT-B-16"])
def test_fast_path_embeddings_equal_the_path_before_it(slides, model):
    """Real SVS, DICOM and plain images, with tiny (resized 224 → 64 px) and an open_clip ViT-B/16 with random
    weights (224 px, no resize); readers in this process and in a reader process."""
    encoder = load_encoder(model, checkpoint="random" if model.startswith("openclip") else None, device="cpu")
    limit = 12 if model == "tiny" else 5
    for kind, (path, mpp, tiling) in slides.items():
        grid = grid_of(path, mpp, tiling, limit)
        assert len(grid) >= 3, kind
        expected = reference_embeddings(path, grid, encoder)
        for workers in (0, 1) if model == "tiny" else (0,):
            got = embed_slide(path, grid, encoder, mpp=mpp, batch_size=5, num_workers=workers)
            np.testing.assert_allclose(got, expected, atol=BATCH_ATOL, err_msg=f"{kind}, {workers} readers")


def features_by_slide(index: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """slide_id → (coords, float32 of the stored float16 features), read back from the committed segments."""
    catalog, out = Catalog(index), {}
    for folder in catalog.snapshot.segment_dirs():
        seg = SegmentFiles(folder)
        patches = seg.table("patches", ["slide_row", "x", "y"]).to_pydict()
        rows = np.asarray(patches["slide_row"])
        for slide in seg.table("slides").to_pylist():
            mine = np.flatnonzero(rows == slide["slide_row"])
            coords = np.stack([np.asarray(patches["x"])[mine], np.asarray(patches["y"])[mine]], axis=1)
            out[slide["slide_id"]] = (coords, np.asarray(seg.features[mine], np.float32))
    return out


def test_index_with_readers_stores_the_path_before_its_features_and_fails_bad_slides_in_one_line(slides, tmp_path):
    """A run with two reader processes over every kind of input plus broken files: the good slides' stored
    features are the reference embeddings (to float16), each bad one fails in one line, the run goes on."""
    folder = tmp_path / "cohort"
    folder.mkdir()
    for kind, (path, mpp, tiling) in slides.items():
        if mpp is None and tiling == TilingConfig():
            (shutil.copytree if path.is_dir() else shutil.copy)(path, folder / path.name)
    (folder / "corrupt.svs").write_bytes(b"II*\x00" + os.urandom(600))
    (folder / "empty.tif").write_bytes(b"")
    blank = write_slide(folder / "blank.tif", SyntheticSlideSpec(1024, 1024, (), seed=1))  # no tissue
    config = IndexConfig(model="tiny", num_workers=2, batch_size=16)
    report = run_index([folder], tmp_path / "idx", config, show_progress=False)
    assert sorted(report.failed) == ["blank", "corrupt", "empty"], report.failed
    assert all("\n" not in why and why for why in report.failed.values())
    assert "no tissue" in report.failed[blank.stem]
    stored = features_by_slide(tmp_path / "idx")
    encoder = load_encoder("tiny", device="cpu")
    for kind, (path, mpp, tiling) in slides.items():
        if mpp is not None or tiling != TilingConfig():
            continue
        slide_id = "dicom" if path.is_dir() else path.name.split(".")[0]
        coords, features = stored[slide_id]
        grid = prepare_slide(path, {"slide_id": slide_id}, PrepareOptions(TilingConfig()), hash_file=False).grid
        np.testing.assert_array_equal(coords, grid.coords)
        np.testing.assert_allclose(features, reference_embeddings(path, grid, encoder), rtol=FLOAT16, atol=1e-4,
                                   err_msg=kind)


def test_worker_default_is_sized_from_the_cores():
    cores = len(os.sched_getaffinity(0))
    assert resolve_workers(None, "cpu") == cores
    assert resolve_workers(None, "cuda") == max(1, cores - 1)
    assert resolve_workers(3, "cpu") == 3 and resolve_workers(0, "cuda") == 0
    assert IndexConfig().num_workers is None


def test_a_reader_that_dies_fails_its_task_in_one_line_and_is_replaced(slides):
    path = str(slides["JPEG SVS, 20x from level 1"][0])
    options = PrepareOptions(TilingConfig())
    with ReaderPool(1) as pool:
        first = pool.pids[0]
        pool.submit(PrepareTask(1, path, {"slide_id": "a"}, options, None))
        os.kill(first, signal.SIGKILL)
        answers = []
        while len(answers) < 1:
            answers += pool.answers(10)
        [(kind, (key, result, error, _))] = answers
        assert (kind, key, result) == ("prepare", 1, None)
        assert error == "a reader process died while reading this slide (killed by signal 9)"
        assert pool.pids[0] != first
        pool.submit(PrepareTask(2, path, {"slide_id": "b"}, options, None))
        answers = []
        while not answers:
            answers += pool.answers(30)
        [(_, (key, prepared, error, _))] = answers
        assert key == 2 and error is None and prepared.error is None and len(prepared.grid) > 0
        assert prepared.record["sha256"] and prepared.record["stain_detected"] in ("H&E", "IHC")


def test_readers_inherit_no_open_file_of_the_run(tmp_path):
    """The writer lock (and any other file the indexing process holds) stays out of the reader processes."""
    from indexer.store.writer import IndexWriter

    with IndexWriter(tmp_path / "idx", create=True):
        held = {os.path.realpath(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")}
        with ReaderPool(1) as pool:
            theirs = {os.path.realpath(f"/proc/{pool.pids[0]}/fd/{fd}") for fd in os.listdir(f"/proc/{pool.pids[0]}/fd")}
    lock = [p for p in held if p.startswith(str(tmp_path))]
    assert lock and not set(lock) & theirs


def test_readers_do_not_run_the_callers_script_again(slides, tmp_path):
    """A script without a ``__main__`` guard can use reader processes (multiprocessing's spawn would re-run it)."""
    path = slides["JPEG SVS, 20x from level 1"][0]
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        from indexer.ingestion.embedding import embed_slide
        from indexer.models.encoders import load_encoder
        from indexer.ingestion.prepare import PrepareOptions, prepare_slide
        from indexer.tiles.tiling import TilingConfig
        grid = prepare_slide({str(path)!r}, {{"slide_id": "x"}}, PrepareOptions(TilingConfig()), hash_file=False).grid
        print("rows", embed_slide({str(path)!r}, grid, load_encoder("tiny", device="cpu"), num_workers=2).shape[0])
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("rows") == 1 and "Traceback" not in done.stderr
