"""benchmarks/reproduce.sh: one command for every figure, fresh indexes, sections with their provenance, loud failures."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "reproduce.sh"


def reproduce(*args: str, env: dict | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    import os

    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT,
                          env={**os.environ, **(env or {})})


def listed(mode: str) -> dict[str, str]:
    out = reproduce("--list", *(["--quick"] if mode == "quick" else [])).stdout.splitlines()
    return {out[i].split()[0]: out[i + 1].strip() for i in range(0, len(out), 2)}


def test_every_step_has_a_quick_and_a_full_command_on_fresh_folders():
    quick, full = listed("quick"), listed("full")
    assert list(quick) == list(full) and {"tiling", "search_small", "incremental", "reports", "gpu"} <= set(quick)
    for command in [*quick.values(), *full.values()]:
        assert "{out}" in command and "--keep" not in command, command  # never reuses old indexes
        for word in shlex.split(command):
            if word.startswith("benchmarks/") and word.endswith(".py"):
                assert (ROOT / word).is_file(), word
    assert quick["incremental"] != full["incremental"]


def test_bad_options_are_one_line():
    for args, message in ((["--bogus"], "unknown option --bogus"), (["--only", "nope"], "no step 'nope'")):
        result = reproduce(*args)
        assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1 and message in result.stderr


def test_a_run_writes_sections_with_provenance_and_marks_failures(tmp_path):
    """tiling runs; index fails (an impossible FAISS device); gpu is skipped without CUDA. The report says so, the
    script exits 1, and --publish refuses to copy a failed run."""
    before = (ROOT / "benchmarks" / "RESULTS.md").read_bytes()
    out = tmp_path / "run"
    result = reproduce("--quick", "--only", "tiling,index,gpu", "--out", str(out), "--publish",
                       env={"SLIDESEARCH_FAISS_DEVICE": "tpu"})
    assert result.returncode == 1, result.stderr
    assert "not publishing a run with failed steps" in result.stderr
    assert (ROOT / "benchmarks" / "RESULTS.md").read_bytes() == before
    report = (out / "RESULTS.md").read_text()
    assert report.startswith("# Benchmark results") and "**Failed steps: index.**" in report
    assert re.search(r"Commit `[0-9a-f]{7}", report) and "(quick mode)" in report
    tiling = report.split("## Patch reading and tiling")[1].split("\n## ")[0]
    assert "Step `tiling` (quick mode): `python -m benchmarks.tiling --size 8000" in tiling
    assert "read_patch` 20x from level 1" in tiling and str(out) not in report  # paths shown as OUT
    index = report.split("## Indexing speed")[1].split("\n## ")[0]
    assert "**FAILED (exit" in index and "SLIDESEARCH_FAISS_DEVICE" in index
    if not torch.cuda.is_available():
        assert "Not run: torch sees no CUDA GPU on this machine. Where it can run: `python -m benchmarks.gpu" in report
    assert (out / "tiling" / "log.txt").is_file() and (out / "figures").is_dir()
