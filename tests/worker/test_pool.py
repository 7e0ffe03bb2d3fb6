"""The prefork pool: which thread may start children, and children that die while starting."""

from __future__ import annotations

import os
import signal
import threading
import uuid
from multiprocessing.connection import wait
from typing import Any

import pytest

from ktasks.errors import WorkerError
from ktasks.worker.pool import Pool
from tests.helpers import wait_until

SOURCE = """
@app.task
def note(n):
    effect("note", n=n)
"""


def test_a_child_replaced_during_a_rebalance_callback_outlives_the_callbacks_thread(project: Any,
                                                                                   inproc: Any) -> None:
    p = project(SOURCE, partitions=1)
    h = inproc(p)
    h.start([0])
    pool = h.worker.pool
    [child] = pool.children
    pool.kill(child)

    def revoke_sees_the_death() -> None:
        # What a revoke callback does while it waits for its partitions' tasks: it collects
        # results and deaths, and the dead child is replaced. Then the callback's thread
        # lives on until the new child has started (its parent-death signal is set), and ends.
        h.worker._collect(5.0)
        pool.wait_ready(60)

    thread, _ = h.in_thread(revoke_sees_the_death)
    thread.join(90)
    h.step_until(lambda: len(pool.children) == 1 and all(c.ready for c in pool.children), 60,
                 "a child was started again")
    dead = wait([c.process.sentinel for c in pool.children], 2.0)
    assert not dead, "the replacement died when the rebalance thread that started it exited"
    assert pool.replaced == 1
    p.app_module.note.delay(1)
    p.app.flush()
    h.step_until(lambda: p.effects("note"), 30, "the new child runs tasks")


def _module(tmp_path: Any, monkeypatch: Any, body: str) -> str:
    name = f"poolapp_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import time\nfrom ktasks import App\n" + body
                                         + "\napp = App('pool-test', bootstrap_servers='127.0.0.1:1')\n")
    monkeypatch.syspath_prepend(str(tmp_path))     # spawned children get the parent's sys.path
    return f"{name}:app"


def test_a_child_killed_while_starting_is_replaced_not_fatal(tmp_path: Any, monkeypatch: Any) -> None:
    # The app takes a while to import, so the kill lands while the child starts.
    pool = Pool(_module(tmp_path, monkeypatch, "time.sleep(1.0)"), 2)

    def kill_the_first() -> None:
        wait_until(lambda: pool.children and pool.children[0].process.pid, 30, message="a child started")
        os.kill(pool.children[0].process.pid, signal.SIGKILL)

    killer = threading.Thread(target=kill_the_first)
    killer.start()
    try:
        pool.start(timeout_s=60)      # before the fix: WorkerError "exited with code -9 while starting"
        killer.join(30)
        assert len(pool.children) == 2 and all(c.ready and c.process.is_alive() for c in pool.children)
    finally:
        pool.stop()


def test_a_child_that_cannot_import_the_app_stops_the_pool_with_the_reason(tmp_path: Any,
                                                                         monkeypatch: Any) -> None:
    pool = Pool(_module(tmp_path, monkeypatch, "raise RuntimeError('broken at import')"), 1)
    try:
        with pytest.raises(WorkerError, match="exited with code 1 while starting; is the app importable"):
            pool.start(timeout_s=60)
    finally:
        pool.stop()
