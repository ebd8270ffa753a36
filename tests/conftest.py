"""Shared fixtures: real test slides (skipped when absent), a synthetic-slide factory and a CLI runner."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import pytest

from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_png_slide, write_slide


SHARED_SLIDES = Path(__file__).resolve().parents[1].parent / "shared/data/slides"

# A 2048² layout at 0.25 µm/px whose rectangles sit on the 448-px grid of 20x/224-px patches.
GRID_ALIGNED_REGIONS: tuple[Region, ...] = (
    Region(448, 448, 1344, 1344, "tumour"),
    Region(1344, 448, 1792, 1344, "stroma"),
    Region(448, 1344, 896, 1792, "lymphocytes"),
    Region(896, 1344, 1344, 1792, "adipose"),
)


@pytest.fixture(scope="session")
def shared_slides() -> Path:
    """The folder of real test slides (``../shared/data/slides``); skips the test when absent."""
    if not SHARED_SLIDES.is_dir():
        pytest.skip(f"shared test slides not present at {SHARED_SLIDES}")
    return SHARED_SLIDES


@pytest.fixture
def make_slide(tmp_path: Path) -> Callable[..., Path]:
    """Factory writing a synthetic slide under ``tmp_path``; returns its path.

    Keyword arguments: ``regions`` (default :data:`GRID_ALIGNED_REGIONS`), ``width``/``height``
    (default 2048), ``mpp`` (0.25), ``seed`` (0), ``fmt`` ("tiff", "svs" or "png"), ``name``.
    """
    counter = iter(range(1_000_000))

    def make(regions: Sequence[Region] = GRID_ALIGNED_REGIONS, width: int = 2048, height: int = 2048,
             mpp: float = 0.25, seed: int = 0, fmt: str = "tiff", name: str | None = None) -> Path:
        suffix = {"tiff": ".tif", "svs": ".svs", "png": ".png"}[fmt]
        path = tmp_path / f"{name or f'slide{next(counter)}'}{suffix}"
        spec = SyntheticSlideSpec(width, height, tuple(regions), mpp=mpp, seed=seed,
                                  fmt="tiff" if fmt == "png" else fmt)
        return write_png_slide(path, spec) if fmt == "png" else write_slide(path, spec)

    return make


@pytest.fixture
def run_cli() -> Callable[..., "object"]:
    """Invoke ``slidesearch ARGS…`` in-process; returns click's Result (``stdout``, ``stderr`` separate).

    Works whether or not typer collapsed the app to a single command (when only one is registered).
    """
    import typer
    from typer.testing import CliRunner

    from retrieval.cli import app

    def run(*args: str) -> "object":
        argv = [str(a) for a in args]
        if not hasattr(typer.main.get_command(app), "list_commands"):  # typer collapsed a one-command app
            argv = argv[1:]
        return CliRunner().invoke(app, argv)

    return run


@pytest.fixture(scope="session")
def planted_index(tmp_path_factory):
    """The planted 8-slide cohort (benchmarks/fixtures/planted.py) indexed once: (index dir, cohort dir, IndexConfig)."""
    from benchmarks.fixtures import planted
    from indexer.ingestion.run import IndexConfig, run_index
    from indexer.tiles.tiling import TilingConfig

    root = tmp_path_factory.mktemp("planted")
    csv = planted.write_planted_cohort(root / "cohort")
    bank = planted.write_planted_bank(root / "bank.yaml")
    config = IndexConfig(model="planted", bank=str(bank), tiling=TilingConfig(magnification=10, patch_px=64), num_workers=0)
    report = run_index([root / "cohort"], root / "idx", config, metadata_csv=csv, show_progress=False)
    assert not report.failed
    return root / "idx", root / "cohort", config
