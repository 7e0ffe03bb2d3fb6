"""The task body every system runs, so completion is measured the same way everywhere.

A task gets ``(enqueued_at, sleep_s)``. It notes when it started, sleeps
``sleep_s`` (0 for the no-op workload), then appends one fixed-size record
to the file named by ``BENCH_OUT``: two little-endian doubles,
``started - enqueued_at`` (enqueue-to-start latency) and the completion time.
Appends of 16 bytes with ``O_APPEND`` are atomic, so every process of a
worker writes to the same file without locks, and the harness counts
completions from the file's size.
"""

from __future__ import annotations

import os
import struct
import time
from pathlib import Path

RECORD = struct.Struct("<dd")

_fd: int | None = None
_fd_pid: int | None = None
_fd_path: str | None = None


def work(enqueued_at: float, sleep_s: float) -> None:
    """Run the benchmark task: optional sleep, then one record (see the module docstring)."""
    global _fd, _fd_pid, _fd_path
    started = time.time()
    if sleep_s:
        time.sleep(sleep_s)
    path = os.environ["BENCH_OUT"]
    if _fd is None or _fd_pid != os.getpid() or _fd_path != path:
        # Opened per process (a descriptor inherited through fork would be shared, which
        # is harmless with O_APPEND, but the path may differ between runs).
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        _fd_pid, _fd_path = os.getpid(), path
    os.write(_fd, RECORD.pack(started - enqueued_at, time.time()))


def count(path: Path) -> int:
    """Completed tasks recorded in ``path`` so far."""
    try:
        return path.stat().st_size // RECORD.size
    except FileNotFoundError:
        return 0


def read(path: Path, start: int = 0) -> list[tuple[float, float]]:
    """The records from index ``start`` on: ``(latency_s, completed_at)`` pairs."""
    data = path.read_bytes()
    n = len(data) // RECORD.size
    return [RECORD.unpack_from(data, i * RECORD.size) for i in range(start, n)]
