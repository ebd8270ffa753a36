"""The store under faults: a vacuum racing a reader's open, a writer killed while its reader workers live, and a
disk that fills up part-way through a write (a real tmpfs, through the real CLI)."""

from __future__ import annotations

import fcntl
import os
import types

import numpy as np

import store_scenario as scenario
from indexer.store.compact import vacuum
from indexer.store.reader import Snapshot
from indexer.store.writer import IndexWriter
from retrieval.search import SlideSearcher


class VectorEncoder:
    """The "image" of a patch query is already its embedding."""

    @staticmethod
    def encode_images(images):
        return np.stack(images).astype(np.float32)


def test_a_vacuum_between_the_readers_open_and_its_lock_sends_it_to_the_live_version(tmp_path, monkeypatch):
    root = tmp_path / "idx"
    scenario.OPS["base"](root)
    scenario.OPS["add"](root)
    old = Snapshot(root).version.number
    import indexer.store.reader as reader

    raced = []

    def flock(fd, op):
        if not raced:  # the reader has opened the version CURRENT named, and not yet locked it
            raced.append(True)
            with IndexWriter(root) as writer:
                writer.remove(["B"])
                from indexer.store.compact import merge

                merge(writer)
                raced.append(vacuum(writer.paths, writer.version))
        return fcntl.flock(fd, op)

    monkeypatch.setattr(reader, "fcntl", types.SimpleNamespace(flock=flock, LOCK_SH=fcntl.LOCK_SH))
    snapshot = Snapshot(root)
    assert raced[1]["versions"] >= 1 and raced[1]["segments"] == 2  # the version it had opened is gone
    assert snapshot.version.number > old and len(snapshot.version.segments) == 1
    assert all(d.is_dir() for d in snapshot.segment_dirs())
    monkeypatch.undo()
    searcher = SlideSearcher(root, encoder=VectorEncoder())
    hits = searcher.search_patch(list(scenario.unit(np.ones((1, scenario.DIM)))[0]), 3).hits
    assert hits and "B" not in {h.slide_id for h in hits}
