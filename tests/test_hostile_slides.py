"""Hostile input (issue 12): bombs, lying headers and a fuzz corpus fail one slide at a time, in bounded memory."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

import hostile
from indexer.errors import QueryError, SlideError
from indexer.slides import open_slide
from indexer.slides.limits import pil_pixel_limit
from retrieval.demo.synthetic import SyntheticSlideSpec, write_slide
from retrieval.demo.dicom import write_dicom_slide
from conftest import GRID_ALIGNED_REGIONS, SHARED_SLIDES

ADDRESS_SPACE = 2 << 30  # bytes: the hostile files are opened under this RLIMIT_AS
TORCH_ADDRESS_SPACE = 8 << 30  # `index` maps ~5 GB of address space for torch and FAISS before any slide
CLI = "import sys; sys.argv = ['slidesearch', *sys.argv[1:]]; from retrieval.cli import main; main()"


def run_limited(*args: str, code: str = CLI, address_space: int = ADDRESS_SPACE) -> subprocess.CompletedProcess:
    """Run ``slidesearch ARGS`` (or ``python -c code ARGS``) in a child with limited address space."""
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (address_space, address_space))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], preexec_fn=limit, env=env,
                          capture_output=True, text=True, timeout=300)


def bad_files(folder: Path, good_svs: Path, good_tif: Path) -> dict[str, Path]:
    """The fuzz corpus, by slide id: truncations at 10 offsets, empty, text, bomb, lying and corrupt TIFFs."""
    folder.mkdir(parents=True, exist_ok=True)
    files: dict[str, Path] = {}
    for good, suffix in ((good_svs, ".svs"), (good_tif, ".tif")):
        data = good.read_bytes()
        for cut in hostile.truncations(data):
            path = folder / f"cut{suffix[1:]}{cut}{suffix}"
            path.write_bytes(data[:cut])
            files[path.stem] = path
    (folder / "empty.svs").write_bytes(b"")
    (folder / "notes.svs").write_text("Aperio? no: a text file renamed to .svs\n" * 20)
    files["empty"], files["notes"] = folder / "empty.svs", folder / "notes.svs"
    files["bomb"] = hostile.png_bomb(folder / "bomb.png")
    files["claims2e31"] = hostile.claiming_tiff(folder / "claims2e31.tif")
    files["stripped_huge"] = hostile.stripped_huge_tiff(folder / "stripped_huge.tif")
    files["bad_jpeg_tiles"] = hostile.jpeg_tiled_tiff(folder / "bad_jpeg_tiles.tif")
    return files


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Good slides and the fuzz corpus on disk: (root, good ids, bad files of run 1)."""
    root = tmp_path_factory.mktemp("hostile")
    good = root / "run1"
    svs = write_slide(good / "good_svs.svs", SyntheticSlideSpec(2048, 2048, GRID_ALIGNED_REGIONS, fmt="svs", seed=1))
    tif = write_slide(good / "good_tif.tif", SyntheticSlideSpec(2048, 2048, GRID_ALIGNED_REGIONS, seed=2))
    return root, ["good_svs", "good_tif"], bad_files(good, svs, tif)


def test_every_hostile_file_is_one_slide_error_under_2gb(corpus):
    _, _, files = corpus
    code = (
        "import sys\n"
        "from indexer.errors import SlideError\n"
        "from indexer.slides import open_slide\n"
        "from indexer.tiles.tiling import tile_slide\n"
        "for path in sys.argv[1:]:\n"
        "    try:\n"
        "        with open_slide(path, mpp=0.5) as slide:\n"
        "            tile_slide(slide)\n"
        "        print('OPENED', path)\n"
        "    except SlideError as exc:\n"
        "        print('REFUSED', str(exc).replace(chr(10), ' NEWLINE '))\n"
    )
    result = run_limited(*files.values(), code=code)
    assert result.returncode == 0 and not result.stderr.strip(), result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == len(files) and all(line.startswith("REFUSED") for line in lines), result.stdout
    assert not any("NEWLINE" in line for line in lines)
    by_name = {Path(line.split(":")[0].split()[-1]).stem: line for line in lines}
    assert "limit" in by_name["bomb"] and "1,600,000,000 px" in by_name["bomb"]
    assert "limit" in by_name["stripped_huge"] and "2,500,000,000 px" in by_name["stripped_huge"]
    assert "past the end" in by_name["claims2e31"]
    assert "JPEG" in by_name["bad_jpeg_tiles"]


@pytest.mark.parametrize("name", ["bomb", "stripped_huge", "claims2e31"])
def test_tiles_command_refuses_bombs_with_one_line_under_2gb(corpus, name):
    result = run_limited("tiles", corpus[2][name], "--mpp", "0.5")
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr


def test_lying_tiled_header_and_pixel_limits(tmp_path, make_slide, monkeypatch):
    with pytest.raises(SlideError, match="past the end"):
        open_slide(hostile.tiled_claiming_tiff(tmp_path / "tiled_claim.tif"))
    monkeypatch.setenv("SLIDESEARCH_MAX_SLIDE_PIXELS", "1000000")
    with pytest.raises(SlideError, match="level 0 of 2048x2048 px .* limit of 1,000,000 px"):
        open_slide(make_slide(fmt="svs"))
    monkeypatch.setenv("SLIDESEARCH_MAX_IMAGE_PIXELS", "10000")
    with pytest.raises(SlideError, match="plain image .* limit of 10,000 px.*SLIDESEARCH_MAX_IMAGE_PIXELS"):
        open_slide(make_slide(fmt="png", width=200, height=100))
    monkeypatch.setenv("SLIDESEARCH_MAX_IMAGE_PIXELS", "lots")
    with pytest.raises(Exception, match="SLIDESEARCH_MAX_IMAGE_PIXELS='lots'"):
        open_slide(make_slide(fmt="png", width=20, height=10))


def test_pil_bomb_check_is_never_disabled(corpus, make_slide):
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None
    for path in (make_slide(fmt="png", width=64, height=64), corpus[2]["bomb"], corpus[2]["stripped_huge"]):
        try:
            open_slide(path, mpp=0.5).close()
        except SlideError:
            pass
        assert Image.MAX_IMAGE_PIXELS == before
    with pil_pixel_limit(10 * before):  # raised, not disabled, and only inside the block
        assert Image.MAX_IMAGE_PIXELS == 5 * before + 1
    assert Image.MAX_IMAGE_PIXELS == before


def test_memory_error_while_reading_becomes_a_slide_error(make_slide):
    slide = open_slide(make_slide())

    def exhausted(*args):
        raise MemoryError

    slide._backend.read_region = exhausted
    with pytest.raises(SlideError, match="out of memory"):
        slide.read_region((0, 0), 0, (64, 64))


def test_query_images_are_bounded_in_bytes_and_pixels(corpus, tmp_path, monkeypatch):
    from retrieval.query.parse import load_query_image

    with pytest.raises(QueryError, match="1,600,000,000 px|over the limit"):
        load_query_image(corpus[2]["bomb"])
    small = tmp_path / "q.png"
    Image.new("RGB", (300, 200), (200, 100, 150)).save(small)
    assert load_query_image(small).size == (300, 200)
    cut = tmp_path / "cut.png"
    cut.write_bytes(small.read_bytes()[:200])
    with pytest.raises(QueryError, match="not a readable image"):
        load_query_image(cut)
    monkeypatch.setenv("SLIDESEARCH_MAX_QUERY_PIXELS", "1000")
    with pytest.raises(QueryError, match="300x200 px .* limit of 1,000 px"):
        load_query_image(small)
    monkeypatch.setenv("SLIDESEARCH_MAX_QUERY_BYTES", "100")
    with pytest.raises(QueryError, match="bytes is over the limit of 100 bytes"):
        load_query_image(small)


def failed_lines(stdout: str) -> dict[str, str]:
    """slide id → reason from the ``failed <id>: <reason>`` lines of `slidesearch index`."""
    return dict(line[len("failed "):].split(": ", 1) for line in stdout.splitlines() if line.startswith("failed "))


@pytest.fixture(scope="module")
def first_run(corpus):
    """The good slides and the corpus indexed once (under 2 GB): (index dir, the run's CompletedProcess)."""
    root = corpus[0]
    index = root / "index"
    return index, index_limited(root / "run1", index)


def index_limited(folder: Path, index: Path) -> subprocess.CompletedProcess:
    return run_limited("index", folder, "--out", index, "--model", "tiny", "-q", "--workers", "0",
                       address_space=TORCH_ADDRESS_SPACE)


def test_fuzz_corpus_fails_slide_by_slide_and_keeps_what_was_indexed(corpus, first_run):
    from retrieval.search import SlideSearcher

    root, good_ids, files = corpus
    index, first = first_run
    assert first.returncode == 3, first.stdout + first.stderr
    assert "Traceback" not in first.stdout + first.stderr
    reasons = failed_lines(first.stdout)
    assert set(reasons) == set(files)
    assert "limit" in reasons["bomb"] and "limit" in reasons["stripped_huge"]

    second_dir = root / "run2"
    second_dir.mkdir()
    more = {"tiled_claim": hostile.tiled_claiming_tiff(second_dir / "tiled_claim.tif"),
            "claims_wide": hostile.claiming_tiff(second_dir / "claims_wide.tif", 2**31 - 1, 1)}
    (second_dir / "zero.tif").write_bytes(b"")
    more["zero"] = second_dir / "zero.tif"
    cut = write_dicom_slide(second_dir / "dicom_cut", SyntheticSlideSpec(1024, 1024, (), seed=3))
    (cut / "level0.dcm").write_bytes((cut / "level0.dcm").read_bytes()[:5000])
    more["dicom_cut"] = cut
    if (SHARED_SLIDES / "broken.svs").is_file():
        more["broken"] = second_dir / "broken.svs"
        more["broken"].write_bytes((SHARED_SLIDES / "broken.svs").read_bytes())
    second = index_limited(second_dir, index)
    assert second.returncode == 3, second.stdout + second.stderr
    assert "Traceback" not in second.stdout + second.stderr
    assert set(failed_lines(second.stdout)) == set(more)

    info = json.loads(run_limited("info", index, "--json").stdout)
    assert info["counts"]["slides_ok"] == len(good_ids)
    assert {f["slide_id"] for f in info["failed"]} >= set(files) | set(more)
    assert all("\n" not in f["error"] for f in info["failed"])
    searcher = SlideSearcher(index)
    for slide_id in good_ids:
        assert searcher.search_slide(slide_id, k=2).hits


def test_patch_query_with_a_bomb_is_one_line_exit_2_under_2gb(corpus, first_run):
    result = run_limited("search", "patch", first_run[0], corpus[2]["bomb"])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "limit" in lines[0] and "Traceback" not in result.stderr
