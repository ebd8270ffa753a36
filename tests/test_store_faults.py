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


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(entry))
    return out


def test_a_writer_killed_while_its_reader_workers_live_leaves_no_lock(tmp_path):
    """Kill -9 `index` while its DataLoader workers read patches: a `remove` right after takes the lock at once
    (the workers, which outlive their parent for a while, never held it)."""
    import signal
    import subprocess
    import sys
    import time

    from indexer.synthetic import Region, SyntheticSlideSpec, write_slide

    run = "import sys; sys.argv = ['slidesearch', *sys.argv[1:]]; from retrieval.cli import main; main()"
    small, big, out = tmp_path / "small", tmp_path / "big", tmp_path / "idx"
    write_slide(small / "Z.tif", SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, "stroma"),)))
    write_slide(big / "A.tif", SyntheticSlideSpec(4096, 4096, (Region(0, 0, 4096, 4096, "tumour"),), seed=1))
    common = ["--model", "tiny", "--mag", "20", "--patch", "32", "--quiet"]
    first = subprocess.run([sys.executable, "-c", run, "index", str(small), "--out", str(out), *common,
                            "--workers", "0"], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    writer = subprocess.Popen([sys.executable, "-c", run, "index", str(big), "--out", str(out), *common,
                               "--workers", "2", "--batch-size", "16"], stderr=subprocess.PIPE, text=True)
    deadline, workers = time.monotonic() + 240, []
    while time.monotonic() < deadline and writer.poll() is None and len(workers) < 2:
        workers = _children(writer.pid)
        time.sleep(0.005)
    assert len(workers) >= 2, f"the writer's reader workers never started ({writer.poll()}: {writer.stderr.read()[-300:]})"
    try:
        for pid in workers:  # stopped, they stay alive (holding whatever they inherited) until killed below
            os.kill(pid, signal.SIGSTOP)
        os.kill(writer.pid, signal.SIGKILL)
        writer.wait()
        removed = subprocess.run([sys.executable, "-c", run, "remove", str(out), "Z"], capture_output=True,
                                 text=True, timeout=120)
        assert all(os.path.exists(f"/proc/{p}") for p in workers)  # the workers outlived their writer
        assert removed.returncode == 0 and "being written by" not in removed.stderr, removed.stderr
        assert "taking over the lock" in removed.stderr and f"pid {writer.pid}" in removed.stderr
    finally:
        for pid in workers:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert Snapshot(out).version.counts["slides"] == 0
