"""The worker's partition state across assignments, revokes and lost partitions (issue 11).

These tests drive the real worker in the test process (tests/worker/inproc.py):
real children, a real consumer in the test's group, the real broker, with the
rebalance callbacks called where kafka-python would call them.
"""

from __future__ import annotations

from typing import Any

from tests.fixtures.worker import wait_effects

SOURCE = """
@app.task
def note(n):
    effect("note", n=n)
"""


def test_a_partition_assigned_again_while_the_consumer_kept_it_paused_is_fetched(project: Any,
                                                                                 inproc: Any) -> None:
    p = project(SOURCE, partitions=1)
    h = inproc(p)
    [tp] = h.start([0])
    w = h.worker
    # An eager rebalance: revoke, then assign the same partition again. kafka-python keeps the
    # paused flag of a partition that comes back; the worker's fresh state says "not paused".
    w.consumer.pause(tp)
    w._on_revoked([tp])
    w._on_assigned([tp])
    for n in range(3):
        p.app_module.note.delay(n)
    p.app.flush()
    h.step_until(lambda: len(p.effects("note")) >= 3, 30, "the partition was never fetched again")
    assert sorted(e["n"] for e in wait_effects(p, "note", 3)) == [0, 1, 2]
