"""The `slidesearch` command: registers every command module on the shared app."""

from __future__ import annotations

import importlib
import os

from retrieval.cli_app import app

# Each module adds its commands to `app` when imported; heavy libraries load inside commands.
_COMMAND_MODULES = ("tiles", "models", "index", "search", "search_cases", "bench", "bench_quality", "demo", "serve")
for _name in _COMMAND_MODULES:
    importlib.import_module(f"retrieval.commands.{_name}")


def main() -> None:
    """Console-script entry point."""
    # Idle OpenMP threads must not spin: beside patch-reading workers on few cores, spinning torch
    # threads made encoding several times slower (benchmarks/RESULTS.md, encoder section).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    app()


if __name__ == "__main__":
    main()
