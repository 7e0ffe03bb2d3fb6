"""The prefork pool against the real broker: children that crash, retire, or run past their limits.

A child that dies is noticed, its task is reported lost (retried, then
dead-lettered) and the child is replaced while the others go on; time
limits raise inside the task (soft) or kill the child (hard).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from ktasks.deadletter import StoredDeadLetter
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

CRASHING = """
import ctypes

def first_time(name):
    marker = EFFECTS + "." + name
    if os.path.exists(marker):
        return False
    open(marker, "w").close()
    return True

@app.task
def exits(n):
    if first_time("exits"):
        effect("crashing", n=n, how="exit")
        os._exit(1)
    effect("recovered", n=n, how="exit")

@app.task
def segfaults(n):
    if first_time("segfaults"):
        effect("crashing", n=n, how="segv")
        ctypes.string_at(0)
    effect("recovered", n=n, how="segv")

@app.task
def quick(n):
    effect("quick", n=n)
"""


def test_a_crashing_child_is_replaced_and_its_task_retried(project: Any, kafka_admin: Any) -> None:
    p = project(CRASHING, partitions=2)
    w = p.worker("-c", "2")
    w.wait_assigned()
    m = p.app_module

    for n in range(10):
        m.quick.delay(n)
    m.exits.delay(100)
    for n in range(10, 20):
        m.quick.delay(n)
    m.segfaults.delay(200)
    for n in range(20, 30):
        m.quick.delay(n)
    p.app.flush()

    recovered = wait_effects(p, "recovered", 2)
    quick = wait_effects(p, "quick", 30)
    assert sorted((e["how"], e["n"]) for e in recovered) == [("exit", 100), ("segv", 200)]
    assert sorted((e["how"], e["n"]) for e in p.effects("crashing")) == [("exit", 100), ("segv", 200)]
    # Every other task ran; the only ones that ran twice had run in a child that then died
    # before reporting them (their results, and the ledger's buffered finishes, were still
    # in the child's batch): at-least-once, never lost.
    crashed_pids = {e["pid"] for e in p.effects("crashing")}
    counts = Counter(e["n"] for e in quick)
    assert set(counts) == set(range(30))
    for n, count in counts.items():
        if count > 1:
            pids = [e["pid"] for e in quick if e["n"] == n]
            assert all(pid in crashed_pids for pid in pids[:-1]), (n, pids, crashed_pids)
    wait_until(lambda: sum(p.committed(kafka_admin).values()) == 32, 30, message="all 32 committed")

    # The replacements run tasks: pids after the crashes differ from the crashed ones.
    assert not crashed_pids & {e["pid"] for e in recovered}

    assert w.stop() == 0
    log = w.log()
    assert "died (exit code 1)" in log, log[-4000:]
    assert "died (signal 11)" in log, log[-4000:]
    assert "child process died" in log and "retry 1/" in log, "the lost task was retried as WorkerLost"
    assert "2 lost children, 2 children replaced" in log


def test_max_tasks_per_child_replaces_children(project: Any) -> None:
    p = project("""
        @app.task
        def quick(n):
            effect("quick", n=n)
    """, partitions=1)
    w = p.worker("-c", "2", "--max-tasks-per-child", "5")
    w.wait_assigned()
    for n in range(30):
        p.app_module.quick.delay(n)
    p.app.flush()
    quick = wait_effects(p, "quick", 30)
    assert w.stop() == 0

    assert Counter(e["n"] for e in quick) == Counter(range(30))
    per_pid = Counter(e["pid"] for e in quick)
    assert max(per_pid.values()) <= 5, per_pid
    assert len(per_pid) >= 6, per_pid
    assert "(max_tasks_per_child): replacing it" in w.log()


def test_time_limits(project: Any, read_records: Any) -> None:
    p = project("""
        import time
        from ktasks.errors import SoftTimeLimitExceeded

        @app.task(soft_time_limit_s=0.5, max_retries=1)
        def soft_uncaught(n):
            effect("soft_uncaught", n=n)
            time.sleep(20)
            effect("soft_uncaught_finished", n=n)

        @app.task(soft_time_limit_s=0.5)
        def soft_caught(n):
            try:
                time.sleep(20)
            except SoftTimeLimitExceeded as exc:
                effect("soft_caught", n=n, exc=type(exc).__name__)

        @app.task(time_limit_s=1, max_retries=0)
        def hard(n):
            effect("hard", n=n)
            time.sleep(60)
            effect("hard_finished", n=n)

        @app.task
        def quick(n):
            effect("quick", n=n)
    """, partitions=1)
    w = p.worker("-c", "2")
    w.wait_assigned()
    m = p.app_module
    m.hard.delay(1)
    m.soft_uncaught.delay(2)
    m.soft_caught.delay(3)
    p.app.flush()

    # soft limit, caught: the task handles the exception and succeeds.
    assert [e["exc"] for e in wait_effects(p, "soft_caught", 1)] == ["SoftTimeLimitExceeded"]

    # Both failing tasks end in the dead-letter topic, each with its exception.
    letters = [StoredDeadLetter.from_record(r) for r in read_records(p.topic + ".DLT", min_count=2)]
    by_task = {d.task.rsplit(".", 1)[-1]: d for d in letters if d.task}
    assert sorted(by_task) == ["hard", "soft_uncaught"], [(d.task, d.reason) for d in letters]
    assert by_task["hard"].exc_type == "ktasks.errors.TimeLimitExceeded"
    assert by_task["hard"].reason == "time-limit"
    assert by_task["soft_uncaught"].exc_type == "ktasks.errors.SoftTimeLimitExceeded"
    assert by_task["soft_uncaught"].reason == "retries-exhausted"
    assert by_task["soft_uncaught"].attempts == 2

    # The soft limit raised inside the task on both attempts (max_retries=1); the hard one
    # ran once and was killed; neither got to its end.
    assert [e["n"] for e in p.effects("soft_uncaught")] == [2, 2]
    assert [e["n"] for e in p.effects("hard")] == [1]
    assert not p.effects("soft_uncaught_finished") and not p.effects("hard_finished")

    # The pool goes on with a replacement child.
    for n in range(10):
        m.quick.delay(n)
    p.app.flush()
    assert sorted(e["n"] for e in wait_effects(p, "quick", 10)) == list(range(10))
    assert w.stop() == 0
    log = w.log()
    assert "ran past its time limit" in log
    assert "1 children replaced" in log, log[-2000:]


def test_a_task_counts_as_finished_only_once_what_it_enqueued_is_acknowledged(project: Any) -> None:
    p = project("""
        @app.task
        def first(n):
            second.delay(n)
            effect("first", n=n)

        @app.task
        def second(n):
            effect("second", n=n)

        @app.task(max_retries=0)
        def killer():
            os.kill(os.getpid(), 9)
    """, partitions=1, linger_ms=10000)
    # linger_ms: the producer holds what a task enqueued for 10 s before sending it.
    w = p.worker("-c", "1")
    w.wait_assigned()
    p.app_module.first.delay(1)
    p.app.flush()
    wait_effects(p, "first", 1)
    w.wait_for_log("succeeded")
    # The next task kills the child (as a hard time limit or the OOM killer would).
    p.app_module.killer.delay()
    p.app.flush()
    w.wait_for_log("died")
    wait_effects(p, "second", 1, timeout_s=40)
    assert w.stop() == 0


def test_a_job_handed_ahead_to_a_task_that_turns_slow_is_taken_back_and_runs_elsewhere(project: Any) -> None:
    # 10 ms tasks are handed to a busy child ahead of time, so it starts its next one without a
    # round trip through the parent. One of them runs 3 s: the job waiting behind it must be taken
    # back and run by the other child, once, instead of waiting the 3 s.
    p = project("""
        @app.task
        def step(n, slow_s=0.0):
            started = time.time()
            time.sleep(slow_s or 0.01)
            effect("ran", n=n, started=started)
    """, partitions=1)
    w = p.worker("-c", "2")
    try:
        w.wait_assigned()
        for n in range(30):                      # their average makes the task short
            p.app_module.step.delay(n)
        p.app.flush()
        wait_effects(p, "ran", 30)
        p.app_module.step.delay(30, 3.0)
        for n in range(31, 81):
            p.app_module.step.delay(n)
        p.app.flush()
        ran = wait_effects(p, "ran", 81, timeout_s=60)
        assert Counter(e["n"] for e in ran) == Counter(range(81)), "each ran once"
        slow = next(e for e in ran if e["n"] == 30)
        waited = {e["n"]: round(e["started"] - slow["started"], 2) for e in ran
                  if e["n"] > 30 and e["started"] >= slow["ts"] - 0.5}
        assert not waited, f"records started only as the slow one ended: {waited}"
        assert "took back job" in w.log()
    finally:
        assert w.stop() == 0
