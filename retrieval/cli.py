"""The `slidesearch` command: registers every command module on the shared app."""

from __future__ import annotations

import importlib

from retrieval.cli_app import app

# Each module adds its commands to `app` when imported; heavy libraries load inside commands.
_COMMAND_MODULES = ("tiles", "models", "index", "search", "search_cases", "bench", "bench_quality", "demo", "serve")
for _name in _COMMAND_MODULES:
    importlib.import_module(f"retrieval.commands.{_name}")


def main() -> None:
    """Console-script entry point (``import indexer`` has applied the thread defaults: indexer/settings.py)."""
    app()


if __name__ == "__main__":
    main()
