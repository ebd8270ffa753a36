"""Slide opening: formats, levels, MPP sources and overrides, region reads, pickling, bad input."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import tifffile
from PIL import Image

from indexer.errors import SlideError
from indexer.slides import open_slide


def test_generic_tiff_pyramid_levels_and_mpp(make_slide):
    with open_slide(make_slide()) as slide:
        assert slide.vendor == "generic-tiff"
        assert slide.dimensions == (2048, 2048)
        assert slide.level_count >= 3
        assert slide.level_downsamples[:3] == (1.0, 2.0, 4.0)
        assert slide.level_dimensions[1] == (1024, 1024)
        assert slide.mpp == pytest.approx(0.25)
        assert slide.mpp_source == "openslide.mpp-x"
        assert slide.magnification == pytest.approx(40.0)


def test_svs_opens_as_aperio_with_objective_power(make_slide):
    with open_slide(make_slide(fmt="svs", mpp=0.5)) as slide:
        assert slide.vendor == "aperio"
        assert slide.level_count >= 2
        assert slide.mpp == pytest.approx(0.5)
        assert slide.objective_power == pytest.approx(20.0)


def test_png_is_a_single_level_slide_with_dpi_mpp(make_slide):
    with open_slide(make_slide(fmt="png", width=600, height=400)) as slide:
        assert slide.vendor == "image"
        assert slide.level_count == 1
        assert slide.dimensions == (600, 400)
        assert slide.mpp == pytest.approx(0.25, rel=1e-3)
        assert slide.mpp_source == "image-dpi"


def test_override_wins_and_is_reported(make_slide):
    slide = open_slide(make_slide(), mpp=0.5)
    assert slide.mpp == 0.5
    assert "override" in slide.mpp_source
    assert slide.magnification == pytest.approx(20.0)


def test_tiff_resolution_tags_give_mpp_and_72_dpi_is_ignored(tmp_path):
    pixels = np.full((64, 96, 3), 200, np.uint8)
    good = tmp_path / "stripped.tif"
    tifffile.imwrite(good, pixels, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    slide = open_slide(good)
    assert (slide.vendor, slide.mpp, slide.mpp_source) == ("image", pytest.approx(0.5), "tiff-resolution")

    default_dpi = tmp_path / "dpi72.tif"
    Image.fromarray(pixels).save(default_dpi, dpi=(72, 72))
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(default_dpi)
    slide = open_slide(default_dpi, require_mpp=False)
    assert slide.mpp is None and slide.magnification is None and slide.mpp_source == "none"


def test_read_region_colour_levels_and_white_padding(make_slide):
    slide = open_slide(make_slide())
    tumour = np.asarray(slide.read_region((600, 600), 0, (256, 256)), np.float32)
    assert tumour.shape == (256, 256, 3)
    stroma = np.asarray(slide.read_region((1400, 600), 1, (128, 128)), np.float32)
    assert np.linalg.norm(tumour.mean((0, 1)) - stroma.mean((0, 1))) > 30
    tumour_l1 = np.asarray(slide.read_region((600, 600), 1, (128, 128)), np.float32)
    assert np.abs(tumour_l1.mean((0, 1)) - tumour.mean((0, 1))).max() < 12
    edge = np.asarray(slide.read_region((2048 - 50, 2048 - 50), 0, (100, 100)))
    assert edge.dtype == np.uint8 and (edge[60:, :] == 255).all() and (edge[:, 60:] == 255).all()


def test_plain_image_region_past_edge_is_white(make_slide):
    slide = open_slide(make_slide(fmt="png", width=300, height=200))
    region = np.asarray(slide.read_region((250, -20), 0, (100, 60)))
    assert region.shape == (60, 100, 3)
    assert (region[:20] == 255).all() and (region[:, 50:] == 255).all()
    assert not (region[20:, :50] == 255).all()


def test_thumbnail_and_best_level(make_slide):
    slide = open_slide(make_slide())
    thumb = slide.thumbnail(300)
    assert thumb.mode == "RGB" and max(thumb.size) <= 300
    assert slide.best_level_for_downsample(0.5) == 0
    assert slide.best_level_for_downsample(1.99) == 1  # within the 1 % tolerance of level 1
    assert slide.best_level_for_downsample(3.9) == 1
    assert slide.best_level_for_downsample(4.0) == 2
    assert slide.best_level_for_downsample(1e6) == slide.level_count - 1


def test_pickle_reopens_by_path(make_slide):
    slide = open_slide(make_slide(), mpp=0.3)
    clone = pickle.loads(pickle.dumps(slide))
    assert clone.path == slide.path and clone.mpp == 0.3
    assert np.array_equal(np.asarray(clone.read_region((500, 500), 0, (64, 64))),
                          np.asarray(slide.read_region((500, 500), 0, (64, 64))))


def test_facts_are_json(make_slide):
    facts = open_slide(make_slide(fmt="svs")).facts()
    decoded = json.loads(json.dumps(facts))
    assert decoded["vendor"] == "aperio" and decoded["levels"] >= 2 and decoded["mpp"] == pytest.approx(0.25)
    assert set(decoded) >= {"path", "dimensions", "downsamples", "mpp_source", "objective_power", "magnification"}


@pytest.mark.parametrize("kind", ["missing", "directory", "text", "truncated"])
def test_bad_input_raises_one_line_slide_error(tmp_path, make_slide, kind):
    if kind == "missing":
        path = tmp_path / "nope.svs"
    elif kind == "directory":
        path = tmp_path
    elif kind == "text":
        path = tmp_path / "notes.svs"
        path.write_text("this is not a slide\n")
    else:
        path = tmp_path / "cut.tif"
        path.write_bytes(make_slide().read_bytes()[:5000])
    with pytest.raises(SlideError) as info:
        open_slide(path)
    message = str(info.value)
    assert "\n" not in message and path.name in message


def test_real_svs_without_mpp_needs_override(shared_slides):
    path = shared_slides / "tcga-cr-7395-01a-01-ts1.svs"
    with pytest.raises(SlideError, match="--mpp"):
        open_slide(path)
    slide = open_slide(path, mpp=0.5)
    assert slide.vendor == "aperio" and slide.level_count == 2 and slide.mpp == 0.5


def test_real_stripped_tiff_uses_plain_image_path(shared_slides):
    slide = open_slide(shared_slides / "kidney-48-5.tif", require_mpp=False)
    assert slide.vendor == "image" and slide.level_count == 1
    assert slide.dimensions == (1493, 901)
    assert slide.read_region((0, 0), 0, (32, 32)).size == (32, 32)


def test_real_broken_svs_is_rejected(shared_slides):
    with pytest.raises(SlideError, match="broken.svs"):
        open_slide(shared_slides / "broken.svs", mpp=0.5)


def test_cohort_is_labelled_balanced_and_deterministic(tmp_path):
    import csv

    from retrieval.demo.synthetic import DIAGNOSES, write_cohort

    csv_a = write_cohort(tmp_path / "a", n_patients=4, slides_per_patient=2, size=(768, 768), seed=5)
    csv_b = write_cohort(tmp_path / "b", n_patients=4, slides_per_patient=2, size=(768, 768), seed=5)
    rows = list(csv.DictReader(csv_a.open()))
    assert list(rows[0]) == ["slide_id", "patient_id", "case_id", "label", "stain", "organ", "report"]
    assert len(rows) == 8 and sorted({r["label"] for r in rows}) == sorted(DIAGNOSES)
    for patient in {r["patient_id"] for r in rows}:
        assert len({r["label"] for r in rows if r["patient_id"] == patient}) == 1
    assert all(r["stain"] == "H&E" and r["report"] for r in rows)
    first = rows[0]["slide_id"] + ".tif"
    assert (tmp_path / "a" / first).read_bytes() == (tmp_path / "b" / first).read_bytes()
    assert csv_a.read_text() == csv_b.read_text()
    assert open_slide(tmp_path / "a" / first).level_count >= 2


def test_cohort_layout_follows_the_diagnosis_mixture():
    from retrieval.demo.synthetic import DIAGNOSES, cohort_layout

    mixture = DIAGNOSES["adenocarcinoma"].mixture
    regions = cohort_layout(4000, 4000, mixture, np.random.default_rng(1))
    area = {name: 0 for name in mixture}
    for r in regions:
        area[r.tissue] += (r.x1 - r.x0) * (r.y1 - r.y0)
    total = sum(area.values())
    for name, share in mixture.items():
        assert abs(area[name] / total - share / sum(mixture.values())) < 0.06, name
