"""Regions decoded straight from a TIFF pyramid's tiles (issue 26) are OpenSlide's pixels, byte for byte; where
they would not be (fractional level offsets, a decoder that disagrees), OpenSlide reads them."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import openslide
import pytest
import tifffile
from PIL import Image

from indexer.slides import open_slide
from indexer.slides.tiff_tiles import TiffTiles
from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide

LAYOUT = (Region(0, 0, 1400, 2200, "tumour"), Region(1400, 300, 2600, 2200, "stroma"))


def openslide_rgb(path: Path, x: int, y: int, level: int, w: int, h: int) -> np.ndarray:
    """The reference: OpenSlide's RGBA region composited on white."""
    with openslide.OpenSlide(str(path)) as osr:
        rgba = osr.read_region((x, y), level, (w, h))
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return np.asarray(out)


def random_regions(slide, n: int, seed: int):
    """Regions at every level, some crossing or lying past the slide's edge, some one pixel wide."""
    rng = np.random.default_rng(seed)
    for level in range(slide.level_count):
        for _ in range(n):
            x, y = (int(v) for v in rng.integers(-300, slide.dimensions[0], 2))
            w, h = (int(v) for v in rng.integers(1, 520, 2))
            yield x, y, level, w, h


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tiles")
    spec = SyntheticSlideSpec(2600, 2200, LAYOUT, mpp=0.25, seed=4)
    return {
        "jpeg-svs": write_slide(folder / "jpeg.svs", dataclasses.replace(spec, fmt="svs", compression="jpeg")),
        "zlib-tiff": write_slide(folder / "zlib.tif", spec),
    }


@pytest.mark.parametrize("kind", ["jpeg-svs", "zlib-tiff"])
def test_direct_regions_and_thumbnails_are_openslides_pixels(slides, kind):
    path = slides[kind]
    with open_slide(path) as slide:
        for x, y, level, w, h in random_regions(slide, 12, seed=len(kind)):
            np.testing.assert_array_equal(slide.read_array((x, y), level, (w, h)),
                                          openslide_rgb(path, x, y, level, w, h), err_msg=f"{x, y, level, w, h}")
        assert slide._backend._tiles.enabled  # the direct path did the reads
        with openslide.OpenSlide(str(path)) as osr:
            for size in (1024, 300, 64):
                np.testing.assert_array_equal(np.asarray(slide.thumbnail(size)),
                                              np.asarray(osr.get_thumbnail((size, size)).convert("RGB")))


def test_real_svs_jpeg2000_matches_openslide_and_falls_back_off_whole_pixels(shared_slides):
    """Aperio JPEG 2000: level 0 decoded directly; level 1 (downsample 2.0005) starts between pixels, where
    OpenSlide interpolates, so those regions go through OpenSlide."""
    path = shared_slides / "tcga-cr-7395-01a-01-ts1.svs"
    if not path.is_file():
        pytest.skip("real SVS absent")
    with open_slide(path, mpp=0.5) as slide:
        tiles = slide._backend._direct()
        assert tiles is not None and tiles.region(448, 0, 1, 10, 10) is None  # 448 / 2.0005 is not whole
        for x, y, level, w, h in random_regions(slide, 8, seed=1):
            np.testing.assert_array_equal(slide.read_array((x, y), level, (w, h)), openslide_rgb(path, x, y, level, w, h))
        assert tiles.enabled


def test_a_missing_tile_is_white_as_openslide_composites_it(tmp_path):
    path = write_slide(tmp_path / "sparse.svs", SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, "tumour"),),
                                                                   fmt="svs", compression="jpeg"))
    with tifffile.TiffFile(path) as tif:
        tag = tif.pages[0].tags["TileByteCounts"]
        assert tag.dtype == 4  # LONG
        at = tag.valueoffset + 5 * 4
    data = bytearray(path.read_bytes())
    data[at:at + 4] = bytes(4)  # tile 5 of level 0 now has no data (Aperio writes such sparse tiles)
    path.write_bytes(bytes(data))
    with open_slide(path) as slide:
        got = slide.read_array((200, 200), 0, (400, 400))
        assert slide._backend._tiles.enabled
    np.testing.assert_array_equal(got, openslide_rgb(path, 200, 200, 0, 400, 400))
    assert (got[100:300, 100:300] == 255).all()  # tile 5 spans (256..512, 256..512)


def test_a_decoder_that_disagrees_turns_the_direct_path_off(slides, monkeypatch):
    path = slides["jpeg-svs"]
    assemble = TiffTiles._assemble
    monkeypatch.setattr(TiffTiles, "_assemble", lambda self, *a: assemble(self, *a) ^ np.uint8(1))
    with open_slide(path) as slide:
        got = slide.read_array((512, 512), 0, (300, 300))
        assert not slide._backend._tiles.enabled
        np.testing.assert_array_equal(got, openslide_rgb(path, 512, 512, 0, 300, 300))
        np.testing.assert_array_equal(slide.read_array((0, 0), 1, (99, 99)), openslide_rgb(path, 0, 0, 1, 99, 99))


def test_threads_share_one_slide(slides):
    """The server reads DeepZoom tiles from several threads through one handle."""
    path = slides["jpeg-svs"]
    regions = list(random_regions(open_slide(path), 6, seed=7))
    expected = [openslide_rgb(path, *r) for r in regions]
    errors = []
    with open_slide(path) as slide:
        def work(offset: int) -> None:
            for i in range(len(regions)):
                j = (i + offset) % len(regions)
                x, y, level, w, h = regions[j]
                if not np.array_equal(slide.read_array((x, y), level, (w, h)), expected[j]):
                    errors.append(regions[j])

        threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
