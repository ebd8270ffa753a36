"""`slidesearch tiles`: facts and patch counts, the check image, and one-line errors for bad input."""

from __future__ import annotations

import json

from PIL import Image

from indexer.slides import open_slide
from retrieval.demo.synthetic import Region
from indexer.tiles.tiling import TilingConfig, tile_slide
from assertions import one_error_line


def test_json_reports_facts_and_patch_count(make_slide, run_cli):
    path = make_slide(fmt="svs")
    result = run_cli("tiles", path, "--mag", "10", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    expected = len(tile_slide(open_slide(path), TilingConfig(magnification=10)))
    assert report["patches"] == expected > 0
    assert report["vendor"] == "aperio" and report["mpp"] == 0.25
    assert report["tiling"]["read_level"] == 2 and report["tiling"]["patch_size_level0"] == 896


def test_table_output_and_thumbnail(make_slide, run_cli, tmp_path):
    out = tmp_path / "check" / "grid.png"
    result = run_cli("tiles", make_slide(), "--patch", "112", "--min-tissue", "0.9", "--thumbnail", out)
    assert result.exit_code == 0, result.output
    assert "patches" in result.stdout and "generic-tiff" in result.stdout
    with Image.open(out) as image:
        assert max(image.size) <= 1024
        pixels = image.convert("RGB").getcolors(1 << 20)
    assert any(rgb == (20, 60, 230) for _, rgb in pixels)  # patch grid drawn


def test_mpp_override_changes_the_grid(make_slide, run_cli):
    path = make_slide()
    at_025 = json.loads(run_cli("tiles", path, "--json").stdout)
    at_05 = json.loads(run_cli("tiles", path, "--json", "--mpp", "0.5").stdout)
    assert at_05["mpp_source"].startswith("override") and at_05["tiling"]["patch_size_level0"] == 224
    assert at_05["patches"] > at_025["patches"]


def test_slide_without_tissue_warns_and_succeeds(make_slide, run_cli):
    result = run_cli("tiles", make_slide(regions=()), "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["patches"] == 0
    assert "warning" in result.stderr and "0 patches" in result.stderr


def test_missing_path_directory_and_text_file(run_cli, tmp_path):
    text = tmp_path / "notes.svs"
    text.write_text("not a slide")
    for path, words in ((tmp_path / "nope.svs", "no such file"), (tmp_path, "directory"), (text, "not a readable")):
        result = run_cli("tiles", path)
        assert result.exit_code == 2
        assert words in one_error_line(result)


def test_no_mpp_slide_asks_for_override(run_cli, tmp_path):
    path = tmp_path / "plain.png"
    Image.new("RGB", (300, 300), (180, 90, 160)).save(path)
    result = run_cli("tiles", path)
    assert result.exit_code == 2 and "--mpp" in one_error_line(result)
    assert run_cli("tiles", path, "--mpp", "0.5", "--json").exit_code == 0


def test_real_slides(shared_slides, run_cli):
    svs = shared_slides / "tcga-cr-7395-01a-01-ts1.svs"
    failed = run_cli("tiles", svs)
    assert failed.exit_code == 2 and "--mpp" in one_error_line(failed)
    ok = run_cli("tiles", svs, "--mpp", "0.5", "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["patches"] > 0

    kidney = run_cli("tiles", shared_slides / "kidney-48-5.tif", "--mpp", "0.5", "--json")
    assert kidney.exit_code == 0 and json.loads(kidney.stdout)["vendor"] == "image"

    broken = run_cli("tiles", shared_slides / "broken.svs", "--mpp", "0.5")
    assert broken.exit_code != 0 and "broken.svs" in one_error_line(broken)


def test_unaligned_region_counts_match_library(make_slide, run_cli):
    path = make_slide(regions=(Region(100, 100, 1900, 900, "mucin"),))
    report = json.loads(run_cli("tiles", path, "--json", "--min-tissue", "0.25").stdout)
    assert report["patches"] == len(tile_slide(open_slide(path), TilingConfig(min_tissue=0.25)))
