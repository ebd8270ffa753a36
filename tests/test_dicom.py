"""DICOM-WSI (issue 12): a folder of instances is one slide, read at the right level and MPP, tiled and indexed."""

from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest

from indexer.errors import SlideError
from indexer.ingestion.discovery import collect_slides
from indexer.slides import open_slide, slide_id
from retrieval.demo.synthetic import SyntheticSlideSpec, render_tile, write_slide
from retrieval.demo.dicom import write_dicom_slide
from indexer.tiles.tiling import TilingConfig, tile_slide
from conftest import GRID_ALIGNED_REGIONS
from assertions import one_error_line

SPEC = SyntheticSlideSpec(2048, 1536, GRID_ALIGNED_REGIONS, mpp=0.25, seed=4)


@pytest.fixture(scope="module")
def dicom_slide(tmp_path_factory):
    """A three-level DICOM-WSI folder (2048x1536 at 0.25 µm/px) written from SPEC."""
    return write_dicom_slide(tmp_path_factory.mktemp("dicom") / "case01", SPEC)


def test_folder_opens_as_one_pyramid_with_dicom_mpp(dicom_slide):
    assert sorted(p.name for p in dicom_slide.iterdir()) == ["level0.dcm", "level1.dcm", "level2.dcm"]
    with open_slide(dicom_slide) as slide:
        assert slide.vendor == "dicom"
        assert slide.level_dimensions == ((2048, 1536), (1024, 768), (512, 384))
        assert slide.level_downsamples == (1.0, 2.0, 4.0)
        assert slide.mpp == pytest.approx(0.25) and slide.mpp_source == "dicom-pixel-spacing"
        assert slide.magnification == pytest.approx(40.0)
    with open_slide(dicom_slide / "level1.dcm") as slide:  # one instance stands for its folder
        assert slide.level_count == 3 and slide.dimensions == (2048, 1536)
    assert slide_id(dicom_slide) == "case01"


def test_regions_match_the_rendered_pixels_at_each_level(dicom_slide):
    slide = open_slide(dicom_slide)
    for level, ds in enumerate((1, 2, 4)):
        x, y, side = 600, 520, 256 // ds
        got = np.asarray(slide.read_region((x, y), level, (side, side)), np.float32)
        error = [np.abs(got - render_tile(SPEC, ds, x // ds + dx, y // ds, side, side)).mean() for dx in (-1, 0, 1)]
        assert got.shape == (side, side, 3) and error[1] < 8 and error[1] < min(error[0], error[2]) / 1.5
    edge = np.asarray(slide.read_region((2048 - 40, 1536 - 40), 0, (100, 80)))
    assert edge.shape == (80, 100, 3) and (edge[50:] == 255).all() and (edge[:, 50:] == 255).all()
    clone = pickle.loads(pickle.dumps(slide))
    assert np.array_equal(np.asarray(clone.read_region((700, 700), 1, (32, 32))),
                          np.asarray(slide.read_region((700, 700), 1, (32, 32))))


def test_tiling_equals_the_same_slide_as_tiff(dicom_slide, tmp_path):
    tiff = write_slide(tmp_path / "same.tif", SPEC)
    config = TilingConfig(magnification=10)
    with open_slide(dicom_slide) as dicom, open_slide(tiff) as reference:
        grid, expected = tile_slide(dicom, config), tile_slide(reference, config)
    assert grid.level == expected.level == 2 and grid.size == 896
    assert np.array_equal(grid.coords, expected.coords) and len(grid) > 0


def test_tiles_command_on_a_dicom_folder(dicom_slide, run_cli, tmp_path):
    result = run_cli("tiles", dicom_slide, "--mag", "10", "--json", "--thumbnail", tmp_path / "t.png")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["vendor"] == "dicom" and report["levels"] == 3 and report["mpp"] == pytest.approx(0.25)
    assert report["tiling"]["read_level"] == 2 and report["patches"] > 0
    assert (tmp_path / "t.png").is_file()


def test_collect_slides_makes_one_input_per_dicom_folder(dicom_slide, tmp_path):
    root = tmp_path / "cohort"
    shutil.copytree(dicom_slide, root / "nested" / "case01")
    write_slide(root / "other.tif", SyntheticSlideSpec(512, 512, (), seed=1))
    (root / "nested" / "case01" / "README.txt").write_text("not a slide")
    found = collect_slides([root])
    assert sorted(slide_id(p) for p in found) == ["case01", "other"]
    assert collect_slides([root / "nested" / "case01" / "level0.dcm"]) == [(root / "nested" / "case01").resolve()]


def test_broken_dicom_folders_fail_as_one_line(dicom_slide, tmp_path, run_cli):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "x.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(SlideError, match="not a readable DICOM-WSI folder"):
        open_slide(empty)
    cut = tmp_path / "cut"
    shutil.copytree(dicom_slide, cut)
    level0 = cut / "level0.dcm"
    level0.write_bytes(level0.read_bytes()[: level0.stat().st_size // 2])
    result = run_cli("tiles", cut, "--mag", "40")
    assert result.exit_code == 2 and "cut" in one_error_line(result)


def test_index_a_dicom_folder_beside_a_tiff(dicom_slide, tmp_path, run_cli):
    from retrieval.search import SlideSearcher

    root = tmp_path / "slides"
    shutil.copytree(dicom_slide, root / "case01")
    write_slide(root / "tiff01.tif", SyntheticSlideSpec(2048, 1536, GRID_ALIGNED_REGIONS, seed=5))
    index = tmp_path / "index"
    result = run_cli("index", root, "--out", index, "--model", "tiny", "--mag", "10", "--patch", "64",
                     "--workers", "0", "-q")
    assert result.exit_code == 0, result.output
    info = json.loads(run_cli("info", index, "--json").stdout)
    assert info["counts"]["slides_ok"] == 2 and not info["failed"]
    hits = SlideSearcher(index).search_slide("case01", k=2).hits
    assert [h.slide_id for h in hits][:1] == ["case01"] or "tiff01" in [h.slide_id for h in hits]
