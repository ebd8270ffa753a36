"""indexer/settings.py: the thread defaults reach every entry point, a user's value wins, and only it reads the
environment."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from indexer import settings

ROOT = Path(__file__).resolve().parents[1]


def _env_in_child(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    out = subprocess.run([sys.executable, "-c", code], env={**clean, **env}, cwd=ROOT, capture_output=True,
                         text=True, timeout=120, check=True)
    return out.stdout.strip()


@pytest.mark.parametrize("entry", ["from retrieval.search import SlideSearcher", "import retrieval.cli",
                                   "from indexer.ingestion.run import run_index"])
def test_python_api_and_cli_get_the_thread_defaults_before_torch(entry):
    code = f"{entry}; import os, sys; print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in sys.modules)"
    assert _env_in_child(code) == "PASSIVE False"


def test_a_value_the_user_set_wins():
    code = "import indexer, os; print(os.environ['OMP_WAIT_POLICY'])"
    assert _env_in_child(code, OMP_WAIT_POLICY="ACTIVE") == "ACTIVE"


def test_the_server_runs_one_thread_per_request_unless_told_otherwise():
    code = "from retrieval.serve import one_thread_per_request as f; f(); import os; print(os.environ['OMP_NUM_THREADS'])"
    assert _env_in_child(code) == "1"
    assert _env_in_child(code, OMP_NUM_THREADS="4") == "4"


def test_limits_and_the_faiss_device_follow_their_variables(monkeypatch):
    from indexer.slides.limits import limit
    from indexer.vectors.device import faiss_device

    monkeypatch.setenv(settings.LIMITS["MAX_QUERY_BYTES"], "1000")
    assert limit("MAX_QUERY_BYTES") == 1000
    monkeypatch.setenv(settings.FAISS_DEVICE, "cpu")
    assert faiss_device() == "cpu"


def _environment_reads(tree: ast.AST) -> list[int]:
    """Lines that read or set a variable: ``os.environ.get/setdefault/pop``, ``os.environ[...]``, ``os.getenv``.
    Passing the environment on to a child process (``{**os.environ, ...}``) is neither."""
    lines = []
    for node in ast.walk(tree):
        call = node.func if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
        if call is not None and call.attr in ("get", "setdefault", "pop") and isinstance(call.value, ast.Attribute) \
                and call.value.attr == "environ":
            lines.append(node.lineno)
        elif call is not None and call.attr == "getenv":
            lines.append(node.lineno)
        elif isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "environ":
            lines.append(node.lineno)
    return lines


def test_only_the_settings_module_reads_the_environment():
    found = []
    for path in sorted([*ROOT.glob("indexer/**/*.py"), *ROOT.glob("retrieval/**/*.py")]):
        rel = path.relative_to(ROOT).as_posix()
        if rel != "indexer/settings.py":
            found += [f"{rel}:{line}" for line in _environment_reads(ast.parse(path.read_text()))]
    assert found == [], f"read the environment through indexer/settings.py: {found}"
    assert _environment_reads(ast.parse((ROOT / "indexer/settings.py").read_text()))  # the check sees real reads
