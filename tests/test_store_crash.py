"""A writer SIGKILLed at 39 points (staging, segment writing, FAISS writing, quantizer training and back-fill,
commit, cleanup, removal, metadata, compaction, vacuum): the index then opens as exactly the previous version or the new one, and
a re-run ends equal, in rows and vectors, to an uninterrupted run, with no temporary files left."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import store_scenario as scenario
from indexer import vectors as vi
from indexer.errors import IndexError_
from retrieval.query.catalog import Catalog

SCRIPT = Path(scenario.__file__)
# (operation, crash point[#n]): every point of the write path, each reached by the operation named.
POINTS = [
    *[("base", p) for p in (
        "staging.write#2", "staging.rename#3", "staging.done#1", "segment.start", "segment.slide#2",
        "segment.patches", "segment.slides", "segment.vectors", "segment.faiss.slides", "segment.faiss.slides_mean",
        "segment.faiss.subvectors", "segment.faiss.patches", "segment.publish", "segment.published",
        "commit.version", "commit.current", "commit.done", "cleanup.staging#2")],
    ("add", "staging.write#1"), ("add", "segment.slide#1"), ("add", "commit.current"),
    ("remove", "tombstones.write"), ("remove", "commit.version"), ("remove", "commit.done"),
    ("metadata", "metadata.write"), ("metadata", "commit.current"),
    *[("compact", p) for p in ("segment.start", "compact.segment#1", "segment.faiss.patches", "compact.commit",
                               "commit.current", "commit.done", "vacuum.version", "vacuum.segment")],
    *[("grow", p) for p in ("segment.faiss.patches", "backfill.codes#1", "backfill.codes#2", "commit.version",
                            "commit.current")],
]
BEFORE = {"base": [], "add": ["base"], "metadata": ["base"], "remove": ["base", "add"],
          "compact": ["base", "add", "remove"], "grow": ["base", "add"]}
QUERIES = scenario.unit(np.random.default_rng(7).standard_normal((3, scenario.DIM)))


def state(root: Path):
    """Everything a search can see: live slides with metadata, stored vectors, and search results."""
    try:
        catalog = Catalog(root)
    except IndexError_:
        return None
    slides = catalog.slides.to_pylist()
    ok = np.array([s["slide_row"] for s in slides if s["status"] == "ok"], np.int64)
    drop = {"path", "mtime_ns"}
    rows = [tuple(sorted((k, v) for k, v in s.items() if k not in drop)) for s in slides]
    vectors = {name: vi.reconstruct(catalog.faiss(name), ok).round(6).tobytes() for name in ("slides", "slides_mean")}
    allowed = catalog.allowed_slide_rows(None)
    slide_q = vi.reconstruct(catalog.faiss("slides"), ok[:2])
    found = [vi.search(catalog.faiss("slides"), slide_q, 4, allowed)[1].tolist(),
             vi.search(catalog.faiss("patches"), QUERIES, 5,
                       None if allowed is None else _patch_rows(catalog, allowed))[1].tolist()]
    catalog.snapshot.close()
    return rows, vectors, found


def _patch_rows(catalog: Catalog, slide_rows: np.ndarray) -> np.ndarray:
    table = catalog.db.sql("SELECT patch_row, slide_row FROM patches").fetchnumpy()
    return table["patch_row"][np.isin(table["slide_row"], slide_rows)]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """For each operation: the index before it (a folder to copy) and the state after an uninterrupted run."""
    base = tmp_path_factory.mktemp("prepared")
    out = {}
    for op, steps in BEFORE.items():
        before = base / f"before-{op}"
        before.mkdir()
        for step in steps:
            scenario.OPS[step](before)
        after = base / f"after-{op}"
        shutil.copytree(before, after)
        scenario.OPS[op](after)
        out[op] = (before, state(before), state(after))
    return out


def leftovers(root: Path) -> list[Path]:
    staging = list((root / "staging").glob("*")) if (root / "staging").is_dir() else []
    return [p for p in root.rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".build-")] + staging


@pytest.mark.parametrize("op, point", POINTS, ids=[f"{o}:{p}" for o, p in POINTS])
def test_kill_leaves_old_or_new_version_and_rerun_completes(prepared, tmp_path, op, point):
    before_dir, old, new = prepared[op]
    root = tmp_path / "idx"
    shutil.copytree(before_dir, root)
    env = {**os.environ, "SLIDESEARCH_CRASH_AT": point}
    proc = subprocess.run([sys.executable, str(SCRIPT), op, str(root)], env=env, capture_output=True, timeout=120)
    assert proc.returncode == -9, f"{point} was not reached: rc {proc.returncode} {proc.stderr.decode()[-500:]}"
    seen = state(root)
    assert seen == old or seen == new, f"after a kill at {point} the index is neither the old nor the new version"
    scenario.OPS[op](root)  # the same command again
    assert state(root) == new
    assert not leftovers(root)
