"""The searcher of the newest committed version, moved to a new version off the request path."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from retrieval.query.explain import EXPLAIN
from retrieval.search import SlideSearcher

CHECK_EVERY_S = 1.0


def warm(searcher: SlideSearcher) -> SlideSearcher:
    """Load every lazy part of a searcher now (arrays, FAISS indexes, filters, explanations), not in a request."""
    from indexer import vectors as vi

    catalog, arrays = searcher.catalog, searcher.arrays
    catalog.filters  # noqa: B018 - cached properties
    rows = sorted(arrays.ids.values())[:1]
    first = {"slides": rows, "slides_mean": rows, "subvectors": [r * arrays.n_prototypes for r in rows],
             "patches": [int(arrays.patch_start[r]) for r in rows if arrays.patch_count[r]]}
    for name, ids in first.items():
        index = catalog.faiss(name)
        if ids:
            vi.reconstruct(index, np.asarray(ids))  # IVF indexes build their direct map here, not in a request
    arrays.representative_patches(EXPLAIN)
    searcher.composition  # noqa: B018
    searcher.bank  # noqa: B018
    return searcher


class LiveIndex:
    """One searcher per committed version; requests take the current one, which never changes under them.

    At most every ``check_every`` s a request starts a background thread that looks whether a newer version
    was committed and, if so, opens and warms a searcher on it and swaps it in. A request in flight keeps the
    searcher it took (and with it the shared lock on its version, so vacuum cannot delete its files).

    Args:
        root: the index directory.
        encoder: the encoder every version's searcher shares (None: loaded on first use by each searcher).
        check_every: seconds between looks at ``CURRENT``.
    """

    def __init__(self, root: str | Path, encoder: Any = None, check_every: float = CHECK_EVERY_S):
        self.root, self.encoder, self.check_every = Path(root), encoder, check_every
        self._searcher = warm(SlideSearcher(self.root, encoder=encoder))
        self._checked = time.monotonic()
        self._building = threading.Lock()
        self.swaps = 0

    @property
    def version(self) -> int:
        """The number of the version requests are answered from."""
        return self._searcher.catalog.snapshot.version.number

    def current(self) -> SlideSearcher:
        """The searcher of the newest version known, from memory alone (never a disk read: it is called on the
        event loop); at most every ``check_every`` s a background thread looks for a newer version and moves to it."""
        now = time.monotonic()
        if now - self._checked >= self.check_every and self._building.acquire(blocking=False):
            self._checked = now
            threading.Thread(target=self._move, name="index-refresh", daemon=True).start()
        return self._searcher

    def _move(self) -> None:
        try:
            if not self._searcher.catalog.is_current():
                self._searcher = warm(SlideSearcher(self.root, encoder=self.encoder))  # one assignment: atomic
                self.swaps += 1
        except Exception:  # noqa: BLE001 - keep serving the old version; the next check tries again
            import logging

            logging.getLogger("slidesearch.serve").exception("could not open the new version of %s", self.root)
        finally:
            self._building.release()
