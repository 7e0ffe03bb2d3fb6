"""Revoke: a revoked task that has not started does not run, wherever it waits, and whenever workers start."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any

from ktasks.ledger import Ledger
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until


def _revoked_in_ledger(p: Any, ids: list[str]) -> list[Any]:
    with Ledger(p.ledger_path) as ledger:
        return wait_until(lambda: [e for i in ids for e in ledger.find(i) if e.state == "revoked"]
                          if all(any(e.state == "revoked" for e in ledger.find(i)) for i in ids) else None,
                          30, message=f"{ids} revoked in the ledger")


def test_a_revocation_made_before_the_worker_started_is_honoured_and_shown_by_ledger_show(project: Any) -> None:
    p = project("""
        @app.task
        def job(n):
            effect("ran", n=n)
    """, partitions=1)
    doomed = p.app_module.job.delay(1)
    p.app_module.job.delay(2)
    by_handle = p.app_module.job.delay(3)
    p.app.flush()
    p.app.revoke(doomed.id)
    by_handle.revoke()
    w = p.worker("-c", "1")
    assert [e["n"] for e in wait_effects(p, "ran", 1)] == [2]
    _revoked_in_ledger(p, [doomed.id, by_handle.id])
    p.app_module.job.delay(4)
    wait_effects(p, "ran", 2)
    assert w.stop() == 0
    assert sorted(e["n"] for e in p.effects("ran")) == [2, 4]
    shown = subprocess.run([sys.executable, "-m", "ktasks", "ledger", "show", "--ledger", str(p.ledger_path),
                            doomed.id], capture_output=True, text=True, check=True).stdout
    assert "revoked" in shown and "revoked at" in shown


def test_the_cli_revokes_a_queued_task_and_a_countdown_on_a_running_worker(project: Any) -> None:
    p = project("""
        @app.task
        def job(n):
            effect("ran", n=n)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    # Due well after the CLI (a Python process that imports ktasks and connects) is done, even on
    # a loaded machine: the revocations must reach the worker before the tasks are due.
    later = p.app_module.job.apply_async(args=(1,), countdown_s=16)
    queued = p.app_module.job.apply_async(args=(2,), countdown_s=15)
    p.app.flush()
    env = {"PYTHONPATH": str(p.dir)}
    out = subprocess.run([sys.executable, "-m", "ktasks", "revoke", "-A", f"{p.module}:app", later.id, queued.id],
                         capture_output=True, text=True, cwd=p.dir, env={**os.environ, **env}, check=True)
    assert "revoked 2 task(s)" in out.stdout
    p.app_module.job.apply_async(args=(3,), countdown_s=17)
    p.app.flush()
    assert [e["n"] for e in wait_effects(p, "ran", 1)] == [3]
    # Beyond the largest delay tier (5 s here) they waited in the scheduled topic, whose owner
    # drops a revoked ETA with its entry instead of enqueueing it.
    for handle in (later, queued):
        w.wait_for_log(f"scheduled task {handle.id} was revoked: dropped")
    assert w.stop() == 0
    assert [e["n"] for e in p.effects("ran")] == [3]
