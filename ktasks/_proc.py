"""Process liveness, shared by the dev broker (its pid file) and the ledger (who holds a key)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

__all__ = ["pid_alive", "is_zombie"]


def pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs: it answers ``kill(pid, 0)`` and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return not is_zombie(pid)


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
