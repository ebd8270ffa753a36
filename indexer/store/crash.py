"""Named crash points for the kill tests: ``SLIDESEARCH_CRASH_AT=name[#n][:STOP]`` SIGKILLs the writer at the n-th
hit of point ``name`` (``:STOP``: stops it with SIGSTOP instead, for a test to signal it at that exact moment)."""

from __future__ import annotations

import os
import signal

from indexer import settings

ENV = settings.CRASH_AT
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Kill (or stop) this process when ``$SLIDESEARCH_CRASH_AT`` names this point (a no-op otherwise)."""
    target = settings.read(ENV)
    if not target:
        return
    target, _, action = target.partition(":")
    wanted, _, nth = target.partition("#")
    if wanted != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] == int(nth or 1):
        os.kill(os.getpid(), signal.SIGSTOP if action == "STOP" else signal.SIGKILL)
