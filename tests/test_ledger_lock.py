"""The writer lock beside the ledger: writers queue on it, and a dead holder frees it."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ktasks.ledger import Ledger
from ktasks.ledger_lock import WriterLock, lock_path
from tests.helpers import wait_until

HOLDER = """
import sys
from ktasks.ledger_lock import WriterLock
lock = WriterLock(sys.argv[1])
with lock:
    print("holding", flush=True)
    sys.stdin.readline()
print("released", flush=True)
"""


def _holder(ledger_path: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(ledger_path)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "holding"
    return proc


def _begin_in_thread(path: Path, key: str) -> tuple[threading.Thread, list[object]]:
    """``begin(key)`` on a ledger of its own (SQLite connections stay in their thread)."""
    out: list[object] = []

    def run() -> None:
        with Ledger(path) as ledger:
            out.append(ledger.begin(key, "t", 1, 3).kind)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def test_a_start_waits_for_another_process_holding_the_lock_and_runs_when_it_lets_go(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    holder = _holder(path)
    try:
        thread, out = _begin_in_thread(path, "k1")
        thread.join(0.5)
        assert thread.is_alive() and not out, "the start did not wait for the lock's holder"
        assert holder.stdin is not None
        holder.stdin.write("\n")
        holder.stdin.flush()
        thread.join(10)
        assert out == ["run"]
    finally:
        holder.kill()
        holder.wait()


def test_a_holder_killed_with_sigkill_frees_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    Ledger(path).close()
    holder = _holder(path)
    thread, out = _begin_in_thread(path, "k1")
    thread.join(0.3)
    assert not out
    holder.kill()   # SIGKILL: no chance to unlock; the kernel lets go of its flock
    holder.wait()
    wait_until(lambda: out, 10, message="the start never ran after the lock's holder was killed")
    assert out == ["run"]


def test_the_lock_file_sits_beside_the_ledger(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite3"
    with Ledger(path) as ledger:
        ledger.begin("k1", "t", 1, 3)
        ledger.succeeded("k1", None, 0.0, task="t")
        ledger.flush()
    assert lock_path(path) == tmp_path / "l.sqlite3-lock"
    assert lock_path(path).is_file()


def test_a_lock_file_that_cannot_be_opened_leaves_the_ledger_working(tmp_path: Path,
                                                                      caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "l.sqlite3"
    lock_path(path).symlink_to(tmp_path / "missing" / "lock")   # cannot be created, even by root
    with caplog.at_level(logging.WARNING, logger="ktasks.ledger_lock"), Ledger(path) as ledger:
        ledger.begin("k1", "t", 1, 3)
        ledger.succeeded("k1", 42, 0.0, task="t")
        ledger.flush()
        entry = ledger.get("k1", task="t")
        assert entry is not None and entry.state == "succeeded"
    assert "cannot open the writer lock" in caplog.text


def test_the_lock_is_reentrant_within_one_holder(tmp_path: Path) -> None:
    lock = WriterLock(tmp_path / "l.sqlite3")
    with lock:
        with lock:
            pass
        other = _try_lock_elsewhere(tmp_path / "l.sqlite3")
        assert other == "busy"
    assert _try_lock_elsewhere(tmp_path / "l.sqlite3") == "free"
    lock.close()


def _try_lock_elsewhere(path: Path) -> str:
    code = ("import fcntl, os, sys\n"
            "fd = os.open(sys.argv[1] + '-lock', os.O_RDWR | os.O_CREAT)\n"
            "try:\n    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)\n    print('free')\n"
            "except BlockingIOError:\n    print('busy')\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True,
                          check=True).stdout.strip()
