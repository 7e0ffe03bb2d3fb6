"""The prefork pool: which thread may start children."""

from __future__ import annotations

from multiprocessing.connection import wait
from typing import Any

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
