"""Named crash points for the kill tests: ``SLIDESEARCH_CRASH_AT=name[#n]`` SIGKILLs the writer at the n-th hit."""

from __future__ import annotations

import os
import signal

ENV = "SLIDESEARCH_CRASH_AT"
_hits: dict[str, int] = {}


def point(name: str) -> None:
    """Kill this process with SIGKILL when ``$SLIDESEARCH_CRASH_AT`` names this point (a no-op otherwise)."""
    target = os.environ.get(ENV)
    if not target:
        return
    wanted, _, nth = target.partition("#")
    if wanted != name:
        return
    _hits[name] = _hits.get(name, 0) + 1
    if _hits[name] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
