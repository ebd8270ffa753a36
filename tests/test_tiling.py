"""Tiling geometry on slides with known tissue rectangles, level choice and patch reads."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import GRID_ALIGNED_REGIONS
from indexer.errors import SlideError
from indexer.slides import open_slide
from retrieval.demo.synthetic import Region
from indexer.tiles.tiling import TilingConfig, patch_geometry, read_patch, tile_slide


def _truth(regions, width: int, height: int) -> np.ndarray:
    truth = np.zeros((height, width), bool)
    for r in regions:
        truth[r.y0 : r.y1, r.x0 : r.x1] = True
    return truth


def _covered(grid, width: int, height: int) -> np.ndarray:
    covered = np.zeros((height, width), bool)
    for x, y in grid.coords:
        covered[y : y + grid.size, x : x + grid.size] = True
    return covered


def test_grid_covers_tissue_and_never_lies_on_background(make_slide):
    slide = open_slide(make_slide())
    grid = tile_slide(slide)
    truth = _truth(GRID_ALIGNED_REGIONS, 2048, 2048)
    assert (grid.size, grid.level, grid.read_px, grid.patch_px) == (448, 1, 224, 224)
    assert len(grid) > 0
    assert (_covered(grid, 2048, 2048) & truth).sum() >= 0.95 * truth.sum()
    for x, y in grid.coords:
        assert truth[y : y + grid.size, x : x + grid.size].any()


def test_unaligned_tissue_kept_exactly_by_threshold(make_slide):
    regions = (Region(300, 410, 1500, 1000, "stroma"), Region(700, 1200, 1900, 1900, "necrosis"))
    grid_all = tile_slide(open_slide(make_slide(regions=regions)), TilingConfig(min_tissue=0.0))
    grid = tile_slide(open_slide(make_slide(regions=regions)))
    truth = _truth(regions, 2048, 2048)
    kept = {tuple(c) for c in grid.coords.tolist()}
    for x, y in grid_all.coords:
        true_fraction = truth[y : y + 448, x : x + 448].sum() / 448**2
        if true_fraction >= 0.6:
            assert (x, y) in kept
        if true_fraction <= 0.4:
            assert (x, y) not in kept


def test_grid_is_aligned_row_major_and_deterministic(make_slide):
    path = make_slide()
    grid = tile_slide(open_slide(path), TilingConfig(magnification=40, patch_px=128))
    assert (grid.coords % grid.size == 0).all()
    order = np.lexsort((grid.coords[:, 0], grid.coords[:, 1]))
    assert (order == np.arange(len(grid))).all()
    assert len({tuple(c) for c in grid.coords.tolist()}) == len(grid)
    again = tile_slide(open_slide(make_slide(name="copy")), TilingConfig(magnification=40, patch_px=128))
    assert grid.coords.dtype == np.int64 and np.array_equal(grid.coords, again.coords)


def test_20x_from_40x_reads_level_1_without_resizing(make_slide):
    slide = open_slide(make_slide(fmt="svs"))
    grid = tile_slide(slide)
    assert slide.level_downsamples[1] == 2.0 and grid.level == 1 and grid.read_px == 224
    x, y = grid.coords[0]
    patch = read_patch(slide, grid, 0)
    assert patch.size == (224, 224) and patch.mode == "RGB"
    assert np.array_equal(np.asarray(patch), np.asarray(slide.read_region((int(x), int(y)), 1, (224, 224))))


@pytest.mark.parametrize(("mag", "mpp", "size", "level", "read_px"), [
    (10.0, 0.25, 896, 2, 224),
    (20.0, 0.5, 224, 0, 224),
    (40.0, 0.25, 224, 0, 224),
    (20.0, 0.3, 373, 0, 373),
])
def test_patch_geometry(make_slide, mag, mpp, size, level, read_px):
    slide = open_slide(make_slide(), mpp=mpp)
    assert patch_geometry(slide, TilingConfig(magnification=mag)) == (size, level, read_px)


def test_single_level_image_reads_level_0_and_resizes(make_slide):
    slide = open_slide(make_slide(fmt="png", width=1792, height=1792))
    grid = tile_slide(slide)
    assert (grid.level, grid.read_px, grid.size) == (0, 448, 448)
    assert len(grid) > 0
    patch = np.asarray(read_patch(slide, grid, 0), np.float32)
    full = np.asarray(slide.read_region(tuple(int(v) for v in grid.coords[0]), 0, (448, 448)), np.float32)
    assert patch.shape == (224, 224, 3)
    assert np.abs(patch.mean((0, 1)) - full.mean((0, 1))).max() < 3


def test_blank_slide_has_no_patches(make_slide):
    assert len(tile_slide(open_slide(make_slide(regions=())))) == 0


def test_slide_without_mpp_cannot_be_tiled(tmp_path):
    from PIL import Image

    path = tmp_path / "nompp.png"
    Image.new("RGB", (64, 64), (200, 100, 150)).save(path)
    with pytest.raises(SlideError, match="--mpp"):
        tile_slide(open_slide(path, require_mpp=False))


def test_real_svs_tiles_with_override(shared_slides):
    slide = open_slide(shared_slides / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.5)
    grid = tile_slide(slide)
    width, height = slide.dimensions
    assert (grid.size, grid.level) == (224, 0)
    assert len(grid) > 50
    assert (grid.coords[:, 0] < width).all() and (grid.coords[:, 1] < height).all()
