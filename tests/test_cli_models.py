"""`slidesearch models`: table and JSON listing of encoders and their availability."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from retrieval.cli import app  # the composed CLI, `models` included

runner = CliRunner()


def test_models_json_lists_every_encoder():
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert {"tiny", "openclip:<arch>[@tag]", "quiltnet-b32", "quiltnet-b16", "conch", "plip"} <= set(rows)
    assert rows["tiny"]["available"] is True and rows["tiny"]["dim"] == 128
    assert rows["quiltnet-b32"]["dim"] == 512 and "QuiltNet-B-32" in rows["quiltnet-b32"]["how_to_obtain"]
    assert all({"description", "how_to_obtain", "status"} <= set(row) for row in rows.values())


def test_missing_extra_shows_install_hint(monkeypatch):
    import indexer.models.backends as backends

    monkeypatch.setattr(backends, "module_available", lambda name: False)
    rows = {row["name"]: row for row in json.loads(runner.invoke(app, ["models", "--json"]).stdout)}
    assert rows["conch"]["available"] is False and "slidesearch[conch]" in rows["conch"]["status"]
    assert rows["plip"]["available"] is False and "slidesearch[plip]" in rows["plip"]["status"]


def test_models_table():
    result = runner.invoke(app, ["models"])
    assert result.exit_code == 0, result.output
    for name in ("tiny", "quiltnet-b16", "conch", "plip"):
        assert name in result.stdout
    assert "depends on <arch>" in result.stdout and "slidesearch[conch]" in result.stdout


def test_models_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys, retrieval.commands.models, retrieval.commands.tiles; from typer.testing import CliRunner; "
            "from retrieval.cli_app import app; r = CliRunner().invoke(app, ['models', '--json']); "
            "assert r.exit_code == 0; print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
