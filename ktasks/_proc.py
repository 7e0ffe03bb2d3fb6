"""Process liveness, shared by the dev broker (its pid file) and the ledger (who runs a key right now)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["pid_alive", "is_zombie", "start_ticks"]


def pid_alive(pid: int, started: int | None = None) -> bool:
    """Whether ``pid`` runs: it answers ``kill(pid, 0)`` and is not a zombie.

    ``started`` (the process's :func:`start_ticks`, taken when it was seen
    before): a process under that pid with another start time is not the one
    we mean, which is gone; its pid was reused. Checked where start times are
    known (Linux).
    """
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    else:
        if is_zombie(pid):
            return False
    if started is not None:
        now = start_ticks(pid)
        if now is not None and now != started:
            return False
    return True


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/PID/stat`` field 22); None where unknown.

    With the pid it names one process for good: a pid is reused only by a
    process started later. Exact, unlike a wall-clock time, which depends on
    the clock and on the boot time the kernel reports.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        return int(stat.rsplit(")", 1)[-1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def is_zombie(pid: int) -> bool:
    """A zombie answers ``kill(0)`` but runs nothing; a pid gone meanwhile counts as one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        if sys.platform.startswith("linux"):
            return True  # gone between the two looks
        out = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True)
        return out.stdout.strip().startswith("Z")
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] == "Z"
