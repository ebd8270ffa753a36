"""matplotlib is the optional `bench` extra: no package module needs it to import, and the user's evaluation
(`slidesearch bench retrieval`) writes its JSON and Markdown without it, skipping only the figure, in one line."""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
from pathlib import Path

import indexer
import retrieval
from retrieval.evaluation.bench_retrieval import write_report

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_module_imports_without_matplotlib():
    names = [m.name for pkg in (indexer, retrieval) for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + ".")]
    assert len(names) > 50
    code = ("import importlib, sys; sys.modules['matplotlib'] = None\n"  # any `import matplotlib` now fails
            "for name in sys.argv[1:]:\n"
            "    try:\n        importlib.import_module(name)\n"
            "    except ImportError as exc:\n        print(name, exc)\n"
            "        if 'matplotlib' in str(exc): sys.exit(1)\n")
    done = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_evaluation_report_skips_only_the_figure_without_matplotlib(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    drawn = []
    paths = write_report({"ks": [1, 5]}, tmp_path, "bench_retrieval", lambda r: f"ks {r['ks']}\n",
                         lambda r, p: drawn.append(p), command="slidesearch bench retrieval X")
    assert set(paths) == {"json", "md"} and not drawn and not (tmp_path / "bench_retrieval.png").exists()
    assert json.loads(paths["json"].read_text()) == {"ks": [1, 5], "command": "slidesearch bench retrieval X"}
    assert paths["md"].read_text().startswith("ks [1, 5]")
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["note: no figure: matplotlib is not installed (pip install 'slidesearch[bench]')"]
    monkeypatch.delitem(sys.modules, "matplotlib")
    paths = write_report({"ks": [1]}, tmp_path, "bench_retrieval", lambda r: "", lambda r, p: drawn.append(p))
    assert drawn == [tmp_path / "bench_retrieval.png"] and "png" in paths
