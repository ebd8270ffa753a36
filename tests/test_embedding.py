"""Batched patch embedding: worker-count independence, streaming, order, and one-line read errors."""

from __future__ import annotations

import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer.ingestion.embedding import embed_slide, iter_slide_embeddings
from indexer.models.encoders import load_encoder
from indexer.errors import SlideError
from indexer.slides import open_slide
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide
from indexer.tiles.tiling import TileGrid, TilingConfig, read_patch, tile_slide

# Encoding a patch alone or inside a differently composed batch (fp32, CPU) agrees to rounding.
BATCH_ATOL = 1e-5
REAL_SLIDES = Path(__file__).resolve().parents[1].parent / "shared/data/slides"


@pytest.fixture(scope="module")
def encoder():
    return load_encoder("tiny", device="cpu", batch_size=64)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    """A 2-level pyramidal TIFF at 0.25 µm/px: 20x patches are read from level 1 (448 → 224 px)."""
    path = tmp_path_factory.mktemp("emb") / "slide.tiff"
    regions = (Region(0, 0, 896, 1344, "tumour"), Region(896, 0, 1792, 1344, "stroma"))
    write_slide(path, SyntheticSlideSpec(1792, 1344, regions=regions, mpp=0.25, seed=3))
    with open_slide(path) as s:
        grid = tile_slide(s, TilingConfig(magnification=20, patch_px=224, min_tissue=0.5))
    assert len(grid) == 12 and grid.size == 448 and grid.level == 1
    return path, grid


def test_whole_slide_independent_of_worker_count(slide, encoder):
    path, grid = slide
    results = {w: embed_slide(path, grid, encoder, batch_size=8, num_workers=w) for w in (0, 1, 2)}
    assert results[0].shape == (len(grid), encoder.dim) and results[0].dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(results[0], axis=1), 1.0, atol=1e-5)
    for w in (1, 2):
        np.testing.assert_array_equal(results[w], results[0])
    assert not np.allclose(results[0][0], results[0][-1])  # tumour vs stroma patches differ


def test_matches_encoding_patches_directly_and_batch_size_free(slide, encoder):
    path, grid = slide
    with open_slide(path) as s:
        patches = [read_patch(s, grid, i) for i in range(len(grid))]
    direct = encoder.encode_images(patches)
    np.testing.assert_allclose(embed_slide(path, grid, encoder, batch_size=5, num_workers=0), direct, atol=BATCH_ATOL)
    np.testing.assert_allclose(encoder.encode_images(patches[3:4])[0], direct[3], atol=BATCH_ATOL)
    np.testing.assert_allclose(encoder.encode_images(patches), direct, atol=BATCH_ATOL)


def test_streams_batches_in_grid_order(slide, encoder):
    path, grid = slide
    stream = iter_slide_embeddings(path, grid, encoder, batch_size=5, num_workers=1)
    rows, emb = next(stream)  # available before the rest of the slide is read
    assert rows.tolist() == list(range(5)) and emb.shape == (5, encoder.dim)
    seen = rows.tolist() + [int(r) for rows, _ in stream for r in rows]
    assert seen == list(range(len(grid)))


def test_empty_grid(slide, encoder):
    path, grid = slide
    empty = TileGrid(np.zeros((0, 2), np.int64), grid.size, grid.level, grid.read_px, grid.patch_px)
    assert embed_slide(path, empty, encoder).shape == (0, encoder.dim)
    assert list(iter_slide_embeddings(path, empty, encoder)) == []
    assert encoder.encode_images([]).shape == (0, encoder.dim)


@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_slide_is_one_line_slide_error(slide, encoder, tmp_path, workers):
    path, grid = slide
    broken = tmp_path / "broken.tiff"
    shutil.copy(path, broken)
    broken.write_bytes(b"II*\x00" + b"\x00" * 64)  # truncated after tiling
    with pytest.raises(SlideError) as excinfo:
        embed_slide(broken, grid, encoder, batch_size=4, num_workers=workers)
    message = str(excinfo.value)
    assert "\n" not in message and str(broken) in message and "patch 0" in message


@pytest.mark.parametrize("name", ["tcga-cr-7395-01a-01-ts1.svs", "kidney-48-5.tif"])
def test_real_slides_with_mpp_override(encoder, name):
    """Real files (an Aperio SVS without MPP; a plain TIFF OpenSlide refuses) with a user-given MPP."""
    path = REAL_SLIDES / name
    if not path.is_file():
        pytest.skip(f"shared real slide {name} absent (../shared/data/slides)")
    with open_slide(path, mpp=0.5) as s:
        grid = tile_slide(s, TilingConfig(magnification=20, patch_px=224, min_tissue=0.0))
    if len(grid) == 0:
        pytest.skip(f"{name}: no tissue patches")
    grid = TileGrid(grid.coords[:12], grid.size, grid.level, grid.read_px, grid.patch_px)
    a = embed_slide(path, grid, encoder, mpp=0.5, batch_size=5, num_workers=2)
    b = embed_slide(path, grid, encoder, mpp=0.5, batch_size=12, num_workers=0)
    assert a.shape == (len(grid), encoder.dim)
    np.testing.assert_allclose(a, b, atol=BATCH_ATOL)
