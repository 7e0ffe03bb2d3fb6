"""Shutdown against the real broker: warm (finish, commit, leave) and cold (stop now, lose nothing).

A first SIGTERM is warm: in-flight tasks finish, everything finished is
committed, exit code 0. A second one is cold: running tasks are killed, exit
code 3, and whatever was not committed is redelivered to the next worker.
"""

from __future__ import annotations

import signal
from collections import Counter
from pathlib import Path
from typing import Any

from ktasks.dev import DevBroker, free_port
from tests.fixtures.worker import FAST, Project, wait_effects
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


def test_worker_stopping_comes_once_no_task_runs_and_before_worker_stopped(project: Any) -> None:
    # worker_stopping is where the middleware tell their threads to stop without waiting, so
    # that those blocked on an unreachable broker wind down side by side, not one by one.
    p = project("""
        import logging
        import time

        from ktasks import Middleware

        hooks = logging.getLogger("ktasks.tests.hooks")

        class Hooks(Middleware):
            def worker_stopping(self, worker):
                hooks.warning("hook worker_stopping: %d running", worker.dispatcher.in_flight)

            def worker_stopped(self, worker):
                hooks.warning("hook worker_stopped")

        app.add_middleware(Hooks())

        @app.task
        def slow(n):
            effect("started", n=n)
            time.sleep(1.0)
            effect("ran", n=n)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    p.app_module.slow.delay(1)
    p.app.flush()
    wait_effects(p, "started", 1)
    w.signal(signal.SIGTERM)
    assert w.wait() == 0
    assert len(p.effects("ran")) == 1
    log = w.log()
    order = [log.find(s) for s in ("warm shutdown: waiting for 1 in-flight", "hook worker_stopping: 0 running",
                                   "hook worker_stopped", "worker stopped after")]
    assert -1 not in order and order == sorted(order), (order, log[-3000:])


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


def last_line(log: str) -> str:
    """The worker loop's last log line (the producer's exit-time reports may follow it)."""
    return [line for line in log.splitlines() if "ktasks.worker.worker:" in line][-1]


def test_warm_shutdown_whose_final_commits_are_rejected_says_so_and_exits_non_zero(
        project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def work(n):
            effect("ran", n=n)
    """, partitions=1, commit_retry_deadline_ms=600000, shutdown_commit_timeout_ms=6000)
    # Every commit fails with a retriable error (a coordinator that keeps moving).
    w = p.worker("-c", "1", env={"KTASKS_FAULTS": "commit=raise-retriable"})
    w.wait_assigned()
    for n in range(3):
        p.app_module.work.delay(n)
    p.app.flush()
    wait_effects(p, "ran", 3)
    w.signal(signal.SIGTERM)
    code = w.wait()
    assert code == 4, f"exit code {code}: finished records were left uncommitted\n" + w.log()[-3000:]
    assert "3 finished record(s) not committed" in last_line(w.log())
    assert "trying again for up to 6s (shutdown_commit_timeout_ms)" in w.log()
    assert p.committed(kafka_admin).get(0) is None


def test_warm_shutdown_with_a_retry_publish_pending_while_the_broker_is_down(
        tmp_path: Path, unique: Any) -> None:
    broker = DevBroker(port=free_port(), state_dir=tmp_path / "broker")
    broker.up(timeout_s=120)
    (tmp_path / "p").mkdir()
    p = Project(tmp_path / "p", unique("proj"), broker.bootstrap, unique("tasks"), unique("group"), """
        @app.task(max_retries=3)
        def work(n):
            effect("ran", n=n)
            if n == 3:
                while not os.path.exists(EFFECTS + ".go"):
                    time.sleep(0.02)
                raise IOError("fails while the broker is down")
    """, {**FAST, "partitions": 1, "shutdown_timeout_ms": 3000})
    try:
        w = p.worker("-c", "2")
        w.wait_assigned()
        for n in range(4):
            p.app_module.work.delay(n)
        p.app.flush()
        wait_effects(p, "ran", 4)
        admin = p.app.topics.admin()
        wait_until(lambda: p.committed(admin).get(0) == 3, 30, message="offsets 0-2 committed")
        broker.down()
        (p.dir / "effects.jsonl.go").write_text("")        # the failure comes while the broker is down
        w.wait_for_log("retry 1/3")
        w.signal(signal.SIGTERM)
        code = w.wait(timeout_s=120)
        log = w.log()
        assert code == 3, f"exit code {code}: the failed task's record was not finished\n" + log[-3000:]
        assert "worker failed" not in log, "the worker did not crash (kafka-python's own socket tracebacks aside)"
        assert "all finished records committed" in last_line(log), last_line(log)
        assert "1 retry/dead-letter copies unsent" in last_line(log), last_line(log)
    finally:
        p.cleanup()
        broker.down(wipe=True)


def test_the_summary_is_the_last_line_ktasks_logs(project: Any) -> None:
    # A short --burst run stops while the ETA scheduler's consumer may still be joining its group:
    # what it and the other middleware log as they stop came after the summary before.
    p = project("""
        @app.task
        def work(n):
            effect("ran", n=n)
    """)
    for n in range(3):
        p.app_module.work.delay(n)
    p.app.flush()
    w = p.worker("-c", "1", "--burst")
    assert w.wait() == 0
    ours = [line for line in w.log().splitlines() if "] ktasks." in line]
    assert "worker stopped after" in ours[-1], "\n".join(ours[-5:])
