"""Engines that encode a run's slides: ``local`` (default, this process) and ``ray`` (actors on a Ray cluster).

An engine loads the encoder where it runs, then takes the jobs that the run's rules (``indexer.ingestion.commit``)
hand out and gives back one outcome per job; the run stages nothing itself and commits on the driver.
"""

from __future__ import annotations

from pathlib import Path

from indexer.errors import UserError

ENGINES = ("local", "ray")


def open_engine(config, out: str | Path, report):
    """The engine ``config.engine`` names, for an index at ``out`` (a context manager).

    Raises:
        UserError: an unknown engine, or Ray missing for the ray engine.
    """
    if config.engine == "local":
        from indexer.engines.local import LocalEngine

        if config.address is not None or config.actors is not None:
            raise UserError("--address and --actors belong to the Ray engine; add --engine ray")
        return LocalEngine(config)
    if config.engine == "ray":
        from indexer.engines.ray_engine import RayEngine

        return RayEngine(config, Path(out), report)
    raise UserError(f"unknown engine {config.engine!r}; choose one of: {', '.join(ENGINES)}")
