"""The worker's loop against the real broker: long tasks, key ordering, what gets committed, bad records.

Every test runs real ``ktasks worker`` subprocesses (tests/fixtures/worker.py)
and reads back what the tasks did (``effect``), what the worker logged and
what the group committed in ``__consumer_offsets`` (the admin API).
"""

from __future__ import annotations

import random
from collections import defaultdict
from typing import Any

from kafka import KafkaProducer

from ktasks.deadletter import StoredDeadLetter
from tests.fixtures.worker import wait_effects
from tests.helpers import create_topic, wait_until


def _count_lines(log: str, needle: str) -> int:
    return sum(1 for line in log.splitlines() if needle in line)


def test_task_longer_than_max_poll_interval_costs_no_rebalance(project: Any, kafka_admin: Any) -> None:
    p = project("""
        import time

        @app.task
        def slow(n):
            effect("start", n=n)
            time.sleep(8)
            effect("end", n=n)

        @app.task
        def quick(n):
            effect("quick", n=n)
    """, partitions=1, max_poll_interval_ms=3000, session_timeout_ms=3000)
    w = p.worker("-c", "2")
    w.wait_assigned()

    p.app_module.slow.delay(0)
    p.app.flush()
    started = wait_effects(p, "start", 1)[0]

    # Keep other tasks flowing while the slow one runs, well past max_poll_interval_ms:
    # one at a time, each waited for, until the slow task has ended.
    n = 0
    while not p.effects("end"):
        p.app_module.quick.delay(n)
        p.app.flush()
        n += 1
        wait_effects(p, "quick", n, timeout_s=20)
    ended = p.effects("end")[0]
    quick = p.effects("quick")
    assert any(started["ts"] + 3.0 < q["ts"] < ended["ts"] for q in quick), \
        "quick tasks kept completing after max_poll_interval_ms had passed while the slow one ran"

    # Its offset (0) and everything behind it is committed once it finished.
    total = 1 + n
    wait_until(lambda: p.committed(kafka_admin) == {0: total}, 30, message=f"committed {total}")
    assert w.stop() == 0

    assert [e["n"] for e in p.effects("start")] == [0], "the long task ran exactly once"
    # Until it was told to stop (a warm shutdown revokes, of course), the worker kept its
    # one assignment: no rebalance, nothing revoked or lost.
    log = w.log()
    running = log.split("SIGTERM received")[0]
    assert _count_lines(running, "partitions assigned:") == 1, running[-4000:]
    assert "revoked" not in running and "partitions lost" not in running, running[-4000:]
    assert "poll timeout has expired" not in running


def test_same_key_runs_in_order_and_never_overlaps_unkeyed_run_in_parallel(project: Any) -> None:
    p = project("""
        import time

        @app.task
        def step(key, i, pause):
            start = time.time()
            time.sleep(pause)
            effect("step", key=key, i=i, start=start, end=time.time())

        @app.task
        def free(i):
            start = time.time()
            time.sleep(0.3)
            effect("free", i=i, start=start, end=time.time())
    """, partitions=2)
    w = p.worker("-c", "3")
    w.wait_assigned()

    rng = random.Random(4)
    keys = ["alpha", "beta", "gamma", "delta"]
    per_key = 12
    free_count = 8
    for i in range(per_key):
        for k in keys:
            p.app_module.step.apply_async(args=(k, i, rng.uniform(0.0, 0.04)), key=k)
        if i < free_count:
            p.app_module.free.delay(i)
    p.app.flush()

    steps = wait_effects(p, "step", per_key * len(keys))
    frees = wait_effects(p, "free", free_count)
    assert w.stop() == 0

    by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in steps:
        by_key[e["key"]].append(e)
    for k in keys:
        runs = sorted(by_key[k], key=lambda e: e["start"])
        assert [e["i"] for e in runs] == list(range(per_key)), f"key {k}: ran out of enqueue order"
        for before, after in zip(runs, runs[1:]):
            assert before["end"] <= after["start"], f"key {k}: {before['i']} and {after['i']} overlapped"
    assert sorted(e["i"] for e in frees) == list(range(free_count))
    overlapping = [(a["i"], b["i"]) for a in frees for b in frees
                   if a["i"] < b["i"] and a["start"] < b["end"] and b["start"] < a["end"]]
    assert overlapping, "tasks without a key should run in parallel"


def test_offsets_of_unfinished_records_are_never_committed(project: Any, kafka_admin: Any) -> None:
    p = project("""
        import time

        @app.task
        def slow(n):
            effect("start", n=n)
            time.sleep(6)
            effect("end", n=n)

        @app.task
        def quick(n):
            effect("quick", n=n)
    """, partitions=1)
    w = p.worker("-c", "3")
    w.wait_assigned()
    quick = p.app_module.quick

    for n in range(5):                      # offsets 0..4
        quick.delay(n)
    p.app.flush()
    wait_until(lambda: p.committed(kafka_admin) == {0: 5}, 30, message="the first five committed")

    p.app_module.slow.delay(5)              # offset 5
    p.app.flush()
    wait_effects(p, "start", 1)
    for n in range(6, 56):                  # offsets 6..55, finish while offset 5 runs
        quick.delay(n)
    p.app.flush()
    wait_effects(p, "quick", 55, timeout_s=30)
    assert not p.effects("end"), "the quick tasks should finish while the slow one still runs"

    # While offset 5 runs, the group's committed offset stays at 5, however many finished after it.
    seen: list[dict[int, int]] = []

    def slow_ended() -> bool:
        committed = p.committed(kafka_admin)
        seen.append(committed)
        assert committed == {0: 5}, f"committed {committed} while the record at offset 5 was unfinished"
        return bool(p.effects("end"))

    wait_until(slow_ended, 30, interval_s=0.1, message="the slow task ended")
    assert len(seen) >= 5

    wait_until(lambda: p.committed(kafka_admin) == {0: 56}, 30, message="committed 56 once it finished")
    assert w.stop() == 0


def test_garbage_and_unregistered_records_are_dead_lettered_and_the_worker_goes_on(
        project: Any, kafka_admin: Any, read_records: Any) -> None:
    p = project("""
        @app.task
        def good(n):
            effect("good", n=n)
    """, partitions=1)
    w = p.worker("-c", "2")
    w.wait_assigned()

    raw = KafkaProducer(bootstrap_servers=p.bootstrap)
    try:
        raw.send(p.topic, b"\x00garbage").get(timeout=30)                    # offset 0
    finally:
        raw.close()
    p.app.send_task("nobody.registered.this", args=(1,)).wait_sent()      # offset 1
    p.app_module.good.delay(2).wait_sent()                                # offset 2

    assert [e["n"] for e in wait_effects(p, "good", 1)] == [2]
    wait_until(lambda: p.committed(kafka_admin) == {0: 3}, 30, message="all three committed")

    letters = [StoredDeadLetter.from_record(r) for r in read_records(p.topic + ".DLT", min_count=2)]
    by_offset = {d.original_offset: d for d in letters}
    assert sorted(by_offset) == [0, 1], [(d.original_offset, d.reason) for d in letters]
    assert len(letters) == 2, "each bad record dead-lettered once"
    assert by_offset[0].reason == "undecodable"
    assert by_offset[0].value == b"\x00garbage"
    assert by_offset[0].exc_type == "ktasks.errors.DecodeError"
    assert by_offset[1].reason == "unregistered"
    assert by_offset[1].task == "nobody.registered.this"
    assert by_offset[1].exc_type == "ktasks.errors.TaskNotRegistered"
    assert all(d.original_topic == p.topic for d in letters)
    assert w.stop() == 0


def test_a_deleted_task_topic_is_recreated_when_auto_creation_is_on(project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def note(n):
            effect("note", n=n)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    p.app_module.note.delay(1)
    p.app.flush()
    wait_effects(p, "note", 1)
    kafka_admin.delete_topics([p.topic])
    w.wait_for_log("no longer exist")
    assert p.topic in w.log().split("no longer exist")[0].splitlines()[-1], "the log line names the topic"
    wait_until(lambda: p.topic in kafka_admin.list_topics(), 60, message="the task topic was recreated")
    p.app_module.note.delay(2)
    p.app.flush()
    wait_effects(p, "note", 2, timeout_s=90)
    assert w.stop() == 0


def test_a_deleted_task_topic_stops_the_worker_with_an_error_when_auto_creation_is_off(
        project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def note(n):
            effect("note", n=n)
    """, partitions=1, auto_create_topics=False)
    from ktasks.cli.topics import planned_topics

    # What `ktasks topics create` makes: without the app's own topics (revocations first) the
    # worker waited 30 s for the revocations at its start. ktasks.reports is the cluster's.
    existing = set(kafka_admin.list_topics())
    for planned in planned_topics(p.app):
        if planned.name not in existing:
            create_topic(kafka_admin, planned.name, planned.partitions, planned.configs or None)
    w = p.worker("-c", "1")
    w.wait_assigned()
    kafka_admin.delete_topics([p.topic])
    code = w.wait(timeout_s=90)
    assert code == 1
    line = next(x for x in w.log().splitlines() if "no longer exist" in x)
    assert p.topic in line and "auto_create_topics is off" in line
