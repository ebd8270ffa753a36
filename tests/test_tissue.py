"""Tissue detection: every synthetic class is tissue, background and pen marks are not, masks are exact."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from indexer.slides import open_slide
from retrieval.demo.synthetic import ARTEFACTS, TISSUE_CLASSES, Region, SyntheticSlideSpec, render_tile
from indexer.tiles.tissue import TissueConfig, TissueMask, binary_dilation, binary_erosion, detect_tissue


def _region_fraction(mask: TissueMask, region: Region, inset: int = 32) -> float:
    """Mean of the mask inside ``region`` shrunk by ``inset`` level-0 px (edges are blurred by smoothing)."""
    ds = mask.downsample
    x0, y0 = int((region.x0 + inset) / ds), int((region.y0 + inset) / ds)
    x1, y1 = int((region.x1 - inset) / ds), int((region.y1 - inset) / ds)
    return float(mask.mask[y0:y1, x0:x1].mean())


def test_every_tissue_class_is_detected_and_background_is_not(make_slide):
    regions = tuple(
        Region(256 + 512 * (i % 3), 256 + 768 * (i // 3), 256 + 512 * (i % 3) + 384, 256 + 768 * (i // 3) + 512, name)
        for i, name in enumerate(TISSUE_CLASSES)
    )
    mask = detect_tissue(open_slide(make_slide(regions=regions)))
    for region in regions:
        assert _region_fraction(mask, region) > 0.97, region.tissue
    background = Region(0, 0, 2048, 200, "background")
    assert _region_fraction(mask, background, inset=0) == 0.0
    expected = sum((r.x1 - r.x0) * (r.y1 - r.y0) for r in regions) / 2048**2
    assert mask.tissue_fraction == pytest.approx(expected, abs=0.02)


def test_pen_marks_are_not_tissue(make_slide):
    tissue = Region(300, 300, 1200, 1700, "tumour")
    pens = tuple(Region(1400 + 200 * i, 200, 1400 + 200 * i + 120, 1800, name) for i, name in enumerate(ARTEFACTS))
    mask = detect_tissue(open_slide(make_slide(regions=(tissue, *pens))))
    assert _region_fraction(mask, tissue) > 0.97
    for pen in pens:
        assert _region_fraction(mask, pen, inset=0) < 0.05, pen.tissue
    unfiltered = detect_tissue(open_slide(make_slide(regions=(tissue, *pens))), TissueConfig(remove_pen=False))
    assert _region_fraction(unfiltered, pens[0]) > 0.9  # the blue pen is saturated: only the filter drops it


def test_blank_slide_gives_an_empty_mask(make_slide):
    mask = detect_tissue(open_slide(make_slide(regions=())))
    assert mask.mask.shape[0] > 0 and not mask.mask.any()


def test_slide_full_of_tissue_is_not_split_by_otsu(make_slide):
    regions = (Region(0, 0, 1024, 2048, "tumour"), Region(1024, 0, 2048, 2048, "adipose"))
    mask = detect_tissue(open_slide(make_slide(regions=regions)))
    assert mask.tissue_fraction > 0.97


def test_synthetic_classes_have_distinct_mean_colours():
    assert len(TISSUE_CLASSES) >= 6
    means = {}
    for name in TISSUE_CLASSES:
        spec = SyntheticSlideSpec(512, 512, (Region(0, 0, 512, 512, name),))
        means[name] = render_tile(spec, 1, 0, 0, 512, 512).reshape(-1, 3).mean(0)
    for a, b in itertools.combinations(means, 2):
        assert np.linalg.norm(means[a] - means[b]) > 25, (a, b)


def test_fraction_matches_brute_force_on_random_squares():
    rng = np.random.default_rng(3)
    mask = TissueMask(rng.random((60, 80)) > 0.6, downsample=4.0)
    xs, ys = rng.integers(-40, 340, 50) * 4, rng.integers(-40, 260, 50) * 4
    size = 40
    side = size // 4
    expected = []
    for x, y in zip(xs, ys):
        window = np.zeros((side, side), bool)
        for dy, dx in itertools.product(range(side), range(side)):
            my, mx = y // 4 + dy, x // 4 + dx
            if 0 <= my < 60 and 0 <= mx < 80:
                window[dy, dx] = mask.mask[my, mx]
        expected.append(window.mean())
    np.testing.assert_allclose(mask.fraction(xs, ys, size), expected)
    assert mask.fraction(int(xs[0]), int(ys[0]), size) == pytest.approx(expected[0])


def test_real_he_slide_has_tissue_and_background(shared_slides):
    mask = detect_tissue(open_slide(shared_slides / "tcga-cr-7395-01a-01-ts1.svs", mpp=0.5))
    assert 0.3 < mask.tissue_fraction < 0.9
    assert not mask.mask[0, 0] and not mask.mask[-1, 0]  # corners of this section are glass


@pytest.mark.parametrize("radius", [1, 2, 3])
def test_shifted_morphology_equals_skimage_at_every_border(radius):
    """The fast closing and dilation give skimage's masks (issue 26), on random masks touching every edge."""
    from skimage import morphology

    rng = np.random.default_rng(radius)
    for _ in range(25):
        mask = rng.random((int(rng.integers(3, 70)), int(rng.integers(3, 70)))) < rng.random()
        footprint = morphology.disk(radius)
        np.testing.assert_array_equal(binary_dilation(mask, radius), morphology.dilation(mask, footprint))
        np.testing.assert_array_equal(binary_erosion(binary_dilation(mask, radius), radius),
                                      morphology.closing(mask, footprint))
