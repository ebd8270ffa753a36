"""Back-fill: when a commit trains a quantizer, the live segments written before it (exact below ``exact_max``,
or under the provisional quantizer it replaces) get codes under it too, so every segment of that FAISS index is
searched as one inverted index.

The segments before a quantizer hold fewer vectors than its training threshold (the commit that reaches the
threshold trains it), so a back-fill encodes a bounded number of vectors, at most twice. The codes go to
``codes/v<version>-<segment>-<name>.faiss`` and the new version's entry for that segment names them (``file``);
the segment folder itself is never touched, and older versions keep reading its own FAISS file.
"""

from __future__ import annotations

from typing import Any

from indexer.store import crash
from indexer.store.layout import IndexPaths
from indexer.store.builder import write_faiss
from indexer.store.segments import SegmentFiles


def codes_path(paths: IndexPaths, number: int, segment_id: str, name: str) -> str:
    """Relative path of the back-filled codes of segment ``segment_id``'s FAISS index ``name``, made by version
    ``number``.

    >>> codes_path(IndexPaths("/x"), 7, "s000002", "patches")
    'codes/v000007-s000002-patches.faiss'
    """
    return f"{paths.codes.name}/v{number:06d}-{segment_id}-{name}.faiss"


def backfill(paths: IndexPaths, number: int, segments: tuple[dict[str, Any], ...], quantizers) -> tuple[dict, ...]:
    """``segments`` with their FAISS indexes of each name that has a quantizer in this commit (version ``number``)
    encoded under it, where they were not yet (exact, or under a provisional one it replaces); codes and recall are
    written per segment. After a training commit every segment is under the quantizer, so later commits find
    nothing to do (an index written before back-fills existed gets its exact segments encoded by its next write).

    Args:
        quantizers: the commit's :class:`indexer.store.quantizer.Quantizers` (``table``: name → quantizer).
    """
    out = [dict(s) for s in segments]
    for name in quantizers.table:
        shared = quantizers.shared(name)
        for segment in out:
            entry = segment["faiss"].get(name)
            if entry is None or entry.get("quantizer") == shared[1] or not entry.get("count"):
                continue
            files = SegmentFiles(paths.segment(segment["id"]))
            relative = codes_path(paths, number, segment["id"], name)
            paths.codes.mkdir(parents=True, exist_ok=True)
            crash.point("backfill.codes")
            new = write_faiss(files.array(name), files.faiss_ids(name), paths.root / relative, None,
                              quantizers=quantizers, shared=shared)
            segment["faiss"] = {**segment["faiss"], name: {**new, "file": relative}}
    return tuple(out)
