"""The queue in front of the ledger's write lock: an ``flock`` on a file beside the ledger.

SQLite lets one connection write at a time. A connection that finds the write
lock taken waits in SQLite's busy handler, which sleeps 1, 2, 5, 10 ms and so
on between tries instead of waking when the lock is free: with two children
starting tasks a few thousand times a second, a third of the wall time of a
start was spent asleep that way (a two-process microbenchmark of start-sized
transactions: 11,600 transactions/s through the busy handler, 15,700/s queued
on an ``flock`` first). The kernel wakes a process waiting on an ``flock`` as
soon as the holder lets go, and releases the lock of a process that dies, so a
child killed mid-transaction cannot leave its siblings waiting.

Only ktasks' own short transactions queue here: begin, flush, the records of
tasks not run, and the transactional confirmations. A task's own
``ledger_transaction`` does not (it can hold SQLite's lock for as long as it
runs, and a process must never wait on this lock while it holds SQLite's, or
two processes could wait on each other); SQLite's busy timeout still bounds
every wait on the database itself. Where the lock file cannot be opened (it
does not exist and the directory is read-only), writers go straight to SQLite's busy handler, as before.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # pragma: no cover - no flock on this platform: SQLite's busy handler alone
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ["WriterLock", "lock_path"]


def lock_path(ledger_path: str | os.PathLike[str]) -> Path:
    """The lock file of the ledger at ``ledger_path`` (next to its ``-wal`` and ``-shm``)."""
    return Path(f"{os.fspath(ledger_path)}-lock")


class WriterLock:
    """``with lock:`` holds the host-wide writer lock of one ledger file (re-entrant within one holder)."""

    def __init__(self, ledger_path: str | os.PathLike[str]) -> None:
        self.path = lock_path(ledger_path)
        self._fd: int | None = None
        self._unusable = fcntl is None
        self._depth = 0

    def _open(self) -> int | None:
        if self._fd is None and not self._unusable:
            try:
                # Read-only is enough for flock, so a lock file created by another user (an
                # operator's `ktasks ledger` run as root) still serves.
                self._fd = os.open(self.path, os.O_RDONLY | os.O_CREAT | os.O_CLOEXEC, 0o644)
            except OSError as exc:
                self._unusable = True
                logger.warning("ledger: cannot open the writer lock %s (%s); writers queue in SQLite's "
                               "busy handler instead", self.path, exc)
        return self._fd

    def __enter__(self) -> None:
        if self._depth:
            self._depth += 1
            return
        fd = self._open()
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        self._depth = 1

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0 and self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)

    def close(self) -> None:
        """Let go of the lock file (the lock too, if held)."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._depth = 0
            os.close(fd)
