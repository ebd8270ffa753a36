"""One writer at a time: an flock on ``LOCK`` that records its holder (pid, start time, command), held by the
writer's own process only (never by a child it forks)."""

from __future__ import annotations

import fcntl
import json
import os
import sys
import weakref
from datetime import datetime, timezone
from pathlib import Path

from indexer.errors import IndexError_

_HELD: "weakref.WeakSet[WriterLock]" = weakref.WeakSet()  # locks this process holds


def _forget_in_child() -> None:
    """In a forked child: close the descriptors of the parent's locks without unlocking them (an unlock would
    release the parent's lock too; a close only drops the child's reference to it)."""
    for lock in list(_HELD):
        fd, lock._fd = lock._fd, None
        if fd is not None:
            try:
                os.close(fd)
            except OSError:
                pass
    _HELD.clear()


os.register_at_fork(after_in_child=_forget_in_child)


class WriterLock:
    """Exclusive writer lock of an index directory; searches never take it.

    The kernel releases an flock when the last descriptor of its open file is closed, so a lock dies with its
    writer: the descriptor is close-on-exec and a forked child (a DataLoader worker, however it was started)
    closes its copy at once, so no other process ever keeps a dead writer's lock. A ``LOCK`` file still naming
    a holder means that holder died mid-write, and the next writer says it takes over.

    Args:
        path: the ``LOCK`` file.
        wait: block until the holder releases it instead of refusing.
    """

    def __init__(self, path: Path, wait: bool = False):
        self.path, self.wait = Path(path), wait
        self._fd: int | None = None

    def __enter__(self) -> "WriterLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock, or raise a one-line IndexError_ naming the holder (``wait``: block instead)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(_read(fd))
            if not self.wait:
                os.close(fd)
                raise IndexError_(f"{self.path.parent} is being written by {holder}; "
                                  "wait for it to finish, or pass --wait") from None
            print(f"waiting for {holder} to finish writing {self.path.parent}", file=sys.stderr)
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._fd = fd
        _HELD.add(self)
        previous = _read(fd)
        if previous.get("pid") and previous.get("pid") != os.getpid():
            print(f"taking over the lock of {self.path.parent} left by {_describe(previous)}, "
                  "which is no longer running", file=sys.stderr)
        holder = {"pid": os.getpid(), "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "command": " ".join(sys.argv)[:500]}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(holder).encode(), 0)
            os.fsync(fd)
        except OSError:  # a full disk: give the lock back, then say so
            self.release()
            raise

    def release(self) -> None:
        """Clear the holder record and unlock."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        _HELD.discard(self)
        try:
            os.ftruncate(fd, 0)
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)

    @property
    def held(self) -> bool:
        """Whether this process holds the lock."""
        return self._fd is not None


def _read(fd: int) -> dict:
    try:
        return json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (ValueError, UnicodeDecodeError):
        return {}


def _describe(holder: dict) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} (started {holder.get('started')})"
