"""``ktasks worker --burst``: drain the backlog and exit 0; a progress line on a terminal, plain logs otherwise."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
import threading
from collections import Counter
from typing import Any

from ktasks.progress import format_eta, format_line
from tests.fixtures.worker import wait_effects
from tests.helpers import corrupt_ledger, read_only

SOURCE = """
import time

@app.task
def work(n):
    time.sleep(0.01)
    effect("ran", n=n)

@app.task(bind=True, max_retries=2, retry_backoff_s=0.1)
def flaky(ctx, n):
    if ctx.attempt == 0:
        raise ConnectionError("first attempt fails")
    effect("flaky", n=n, attempt=ctx.attempt)
"""


def enqueue(p: Any, count: int) -> None:
    for n in range(count):
        p.app_module.work.apply_async(args=(n,), key=f"k{n}")
    p.app_module.flaky.delay(0)
    p.app.flush()


def test_burst_exits_0_after_the_backlog_with_plain_logs(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=2)
    enqueue(p, 60)
    w = p.worker("-c", "2", "--burst")
    assert w.wait(120) == 0, w.log()[-4000:]
    counts = Counter(e["n"] for e in p.effects("ran"))
    assert set(counts) == set(range(60)) and max(counts.values()) == 1
    assert [e["attempt"] for e in p.effects("flaky")] == [1], "the retry was drained too"
    assert sum(p.committed(kafka_admin).values()) == 61, "every record committed, the retried one too"
    log = w.log()
    assert "burst: backlog drained, stopping" in log
    assert "61 succeeded, 0 skipped (already done), 1 retried, 0 dead-lettered" in log
    # No terminal: no progress line, and the children's task lines are there.
    assert "\r" not in log and "tasks/s ·" not in log
    assert "(attempt 0): None" in log


def test_burst_progress_line_when_asked(project: Any) -> None:
    p = project(SOURCE, partitions=2)
    enqueue(p, 40)
    w = p.worker("-c", "2", "--burst", "--progress")
    assert w.wait(120) == 0, w.log()[-4000:]
    assert len(wait_effects(p, "ran", 40)) == 40
    log = w.log()
    lines = log.replace("\x1b[K", "").replace("\r", "\n").splitlines()
    final = [line for line in lines if line.startswith("burst: ") and " done " in line]
    assert final, log[-3000:]
    assert final[-1].startswith("burst: 41 done (1 retried, 0 dead)")
    assert " · 0 left · ETA 0:00" in final[-1]
    # While the line is shown, children log warnings only (the retry), not every task.
    assert "succeeded in" not in log
    assert "first attempt fails" in log
    assert "worker stopped after" in log


def test_burst_shows_progress_by_default_on_a_terminal(project: Any) -> None:
    p = project(SOURCE, partitions=2)
    enqueue(p, 20)
    master, slave = pty.openpty()
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p.dir), env.get("PYTHONPATH", "")])
    proc = subprocess.Popen([sys.executable, "-m", "ktasks", "worker", "-A", f"{p.module}:app", "-c", "2",
                             "--burst"], cwd=p.dir, env=env, stdin=subprocess.DEVNULL, stdout=slave,
                            stderr=slave)
    os.close(slave)
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:          # EIO once every writer closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        assert proc.wait(timeout=120) == 0
        reader.join(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    out = b"".join(chunks).decode(errors="replace")
    assert "\x1b[K" in out and "burst: 21 done (1 retried, 0 dead)" in out, out[-3000:]
    assert len(wait_effects(p, "ran", 20)) == 20


def test_progress_line_format() -> None:
    assert format_eta(None) == "--:--"
    assert format_eta(9.4) == "0:09"
    assert format_eta(725) == "12:05"
    assert format_eta(7384) == "2:03:04"
    line = format_line(1240, 3, 0, 412.5, 3760, 3.0)
    assert line == "burst: 1,240 done (3 retried, 0 dead) · 412.5 tasks/s · 3,760 left · ETA 0:09 · elapsed 0:03"
    assert "-- tasks/s" in format_line(0, 0, 0, None, None, 0.0)
    assert "? left · ETA --:--" in format_line(0, 0, 0, None, None, 0.0)
    assert "ETA --:--" in format_line(5, 0, 0, 0.0, 10, 1.0)


def _fails_to_start(p: Any, what: str) -> str:
    w = p.worker("-c", "2")
    assert w.wait(60) == 1, w.log()[-4000:]
    log = w.log()
    assert f"cannot start: ledger {p.ledger_path} {what}" in log, log[-4000:]
    # Stopped in the parent, before any child: no child failed, none was replaced.
    assert "crashed" not in log and "importable" not in log and "Traceback" not in log, log[-4000:]
    assert "ready:" not in log, log[-4000:]
    return log


def test_worker_with_a_corrupt_ledger_exits_with_an_error_naming_the_file(project: Any) -> None:
    p = project(SOURCE, partitions=1)
    corrupt_ledger(p.ledger_path)
    _fails_to_start(p, "is corrupt")
    p.ledger_path.write_bytes(b"\0garbage" * 1000)
    _fails_to_start(p, "is corrupt or not a SQLite file")


def test_worker_with_a_read_only_ledger_exits_with_an_error_naming_the_file(project: Any) -> None:
    p = project(SOURCE, partitions=1)
    from ktasks.ledger import Ledger

    Ledger(p.ledger_path).close()
    with read_only(p.ledger_path):
        _fails_to_start(p, "is read-only for this process")
