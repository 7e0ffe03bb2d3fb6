"""Shutdown against the real broker: warm (finish, commit, leave) and cold (stop now, lose nothing).

A first SIGTERM is warm: in-flight tasks finish, everything finished is
committed, exit code 0. A second one is cold: running tasks are killed, exit
code 3, and whatever was not committed is redelivered to the next worker.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until


def test_warm_shutdown_commits_everything_finished(project: Any, kafka_admin: Any) -> None:
    p = project("""
        import time

        @app.task(bind=True)
        def work(ctx, n):
            time.sleep(0.02)
            effect("ran", n=n, offset=ctx.offset)
    """, partitions=1)
    w = p.worker("-c", "2")
    w.wait_assigned()
    for n in range(300):
        p.app_module.work.delay(n)
    p.app.flush()
    wait_effects(p, "ran", 40)

    w.signal(signal.SIGTERM)                       # mid-stream
    assert w.wait() == 0

    ran = p.effects("ran")
    assert len(ran) < 300, "the worker should have stopped mid-stream"
    assert max(Counter(e["n"] for e in ran).values()) == 1
    # Everything that ran is below the committed offset, and nothing else is: the
    # committed offset is exactly the number of tasks that ran (one partition).
    committed = p.committed(kafka_admin)
    assert committed == {0: len(ran)}, (committed, len(ran))
    assert sorted(e["offset"] for e in ran) == list(range(len(ran)))
    log = w.log()
    assert "warm shutdown" in log
    assert "worker stopped after" in log and f"{len(ran)} succeeded" in log


def test_cold_shutdown_loses_nothing(project: Any, kafka_admin: Any) -> None:
    p = project("""
        import time

        @app.task
        def quick(n):
            effect("start", n=n)
            effect("end", n=n)

        @app.task
        def long(n):
            effect("start", n=n)
            time.sleep(2)
            effect("end", n=n)
    """, partitions=1)
    m = p.app_module
    w1 = p.worker("-c", "2")
    w1.wait_assigned()
    for n in range(10):
        m.quick.delay(n)
    for n in range(10, 14):
        m.long.delay(n)
    for n in range(14, 20):
        m.quick.delay(n)
    p.app.flush()
    wait_until(lambda: {e["n"] for e in p.effects("start")} & set(range(10, 14)), 30,
               message="a long task running")

    w1.signal(signal.SIGTERM)                      # warm ...
    w1.wait_for_log("warm shutdown: waiting")
    w1.signal(signal.SIGTERM)                      # ... then cold, while long tasks run
    assert w1.wait() == 3
    assert "cold shutdown" in w1.log()

    started = Counter(e["n"] for e in p.effects("start"))
    ended = Counter(e["n"] for e in p.effects("end"))
    in_flight = set(started) - set(ended)
    assert in_flight, "the cold shutdown should have killed running tasks"
    committed = p.committed(kafka_admin).get(0, 0)
    assert committed < 20

    # A new worker takes over from the committed offset: every task ends (at least once),
    # and only the ones killed in flight ran again.
    w2 = p.worker("-c", "2")
    wait_until(lambda: {e["n"] for e in p.effects("end")} == set(range(20)), 60,
               message="every task ended after the restart")
    wait_until(lambda: p.committed(kafka_admin) == {0: 20}, 30, message="all 20 committed")
    assert w2.stop() == 0

    starts = Counter(e["n"] for e in p.effects("start"))
    ends = Counter(e["n"] for e in p.effects("end"))
    repeated = {n for n, c in starts.items() if c > 1}
    assert repeated <= in_flight, f"only tasks in flight at the kill ran again: {repeated - in_flight}"
    assert all(c == 1 for c in ends.values()), ends
