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

    from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide

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
    lock = out / "LOCK"

    def held() -> bool:  # the writer has taken the lock (its readers may start before it does)
        try:
            return f'"pid": {writer.pid}' in lock.read_text()
        except OSError:
            return False

    while time.monotonic() < deadline and writer.poll() is None and (len(workers) < 2 or not held()):
        workers = _children(writer.pid)
        time.sleep(0.005)
    assert len(workers) >= 2 and held(), \
        f"the writer's reader workers never ran under its lock ({writer.poll()}: {writer.stderr.read()[-300:]})"
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


RUN = "import sys; sys.argv = ['slidesearch', *sys.argv[1:]]; from retrieval.cli import main; main()"
FAST = ["--model", "tiny", "--mag", "10", "--patch", "64", "--workers", "0", "--quiet"]
FILL_POINTS = 12


def _mount(folder, size: int, remount: bool = False) -> bool:
    import subprocess

    options = f"{'remount,' if remount else ''}size={-(-size // 4096) * 4}k"
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    return done.returncode == 0


def _used(folder) -> int:
    st = os.statvfs(folder)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def test_a_disk_that_fills_up_part_way_ends_each_write_in_one_line_at_the_last_version(tmp_path):
    """`index` into a tmpfs that fills up at 12 points of the run: each run ends in success or one line and exit 2
    (never a signal or a traceback), the index at its last version with nothing unpublished left; a run with
    room then resumes and completes."""
    import shutil
    import subprocess
    import sys

    import pytest

    from retrieval.demo.synthetic import Region, SyntheticSlideSpec, write_slide

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if not _mount(mnt, 256 << 20):
        pytest.skip("cannot mount a tmpfs here (needs root and a kernel that allows it)")
    try:
        first, new, base = tmp_path / "first", tmp_path / "new", tmp_path / "base"
        write_slide(first / "Z.tif", SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, "stroma"),)))
        for i, (name, tissue) in enumerate((("A", "tumour"), ("B", "mucin"), ("C", "necrosis"))):
            write_slide(new / f"{name}.tif", SyntheticSlideSpec(1024, 1024, (Region(0, 0, 1024, 1024, tissue),), seed=i))
        cli = lambda *args: subprocess.run([sys.executable, "-c", RUN, *map(str, args)],  # noqa: E731
                                           capture_output=True, text=True, timeout=300)
        assert cli("index", first, "--out", base, *FAST).returncode == 0
        before = Snapshot(base).version.number

        def fresh(size: int):
            assert _mount(mnt, 256 << 20, remount=True)
            shutil.rmtree(mnt / "idx", ignore_errors=True)
            shutil.copytree(base, mnt / "idx")
            used = _used(mnt)
            assert _mount(mnt, max(size, used + 4096), remount=True)
            return used

        used = fresh(256 << 20)
        assert cli("index", new, "--out", mnt / "idx", *FAST).returncode == 0
        need = _used(mnt) - used
        outcomes = []
        for step in range(FILL_POINTS):
            used = fresh(0)
            room = 4096 + int(step * 1.3 * need / (FILL_POINTS - 1))  # past the end too: the run's peak is higher
            assert _mount(mnt, used + room, remount=True)
            done = cli("index", new, "--out", mnt / "idx", *FAST)
            outcomes.append(done.returncode)
            assert done.returncode in (0, 2), f"{room} bytes free: rc {done.returncode}: {done.stderr[-800:]}"
            if done.returncode == 2:
                line = done.stderr.strip()
                assert "\n" not in line and "No space left on device" in line and "Traceback" not in line, line
            snapshot = Snapshot(mnt / "idx")
            assert snapshot.version.number == (before if done.returncode else before + 1)
            leftovers = [p for p in (mnt / "idx").rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".build-")]
            assert not leftovers, f"{room} bytes free: unpublished files left: {leftovers}"
            searcher = SlideSearcher(mnt / "idx")
            assert searcher.search_slide("Z", 1).hits  # the committed slides still answer
            snapshot.close()
            searcher.catalog.snapshot.close()
        assert outcomes.count(2) >= FILL_POINTS // 2 and outcomes[-1] == 0, outcomes
        assert _mount(mnt, 256 << 20, remount=True)
        assert cli("index", new, "--out", mnt / "idx", *FAST).returncode == 0  # resumes from what it staged
        assert Snapshot(mnt / "idx").version.counts["slides"] == 4
        last = Snapshot(mnt / "idx").version.number
        (tmp_path / "m.csv").write_text("slide_id,label\nA,x\n")
        assert _mount(mnt, _used(mnt), remount=True)  # not a page left: every other write fails at once
        for args in (("compact", mnt / "idx"), ("remove", mnt / "idx", "A"), ("metadata", mnt / "idx", tmp_path / "m.csv")):
            done = cli(*args)
            line = done.stderr.strip()
            assert done.returncode == 2 and "\n" not in line and "No space left on device" in line, (args, done.stderr)
            assert Snapshot(mnt / "idx").version.number == last
            assert not [p for p in (mnt / "idx").rglob("*") if p.name.endswith(".tmp") or p.name.startswith(".build-")]
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)
