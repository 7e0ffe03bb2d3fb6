"""The app of ``benchmarks/failover.py``: one bound task that records where and by whom it ran.

Settings come from ``KTASKS_*`` variables set by the harness. Each completion
appends ``(partition, worker parent pid, completion time)`` as 16 bytes to
``BENCH_OUT`` (atomic ``O_APPEND`` writes), so the harness can tell which
worker made progress on which partition, and when.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Any

from ktasks import App

RECORD = struct.Struct("<iid")

app = App("benchfailover")

_fd: int | None = None


@app.task(bind=True, name="failover.tick")
def tick(ctx: Any, n: int) -> None:
    """Record this completion (the child's parent is the worker)."""
    global _fd
    if _fd is None:
        _fd = os.open(os.environ["BENCH_OUT"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, RECORD.pack(ctx.partition, os.getppid(), time.time()))
