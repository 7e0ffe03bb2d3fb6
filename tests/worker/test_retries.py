"""Failure handling in the worker: retries through retry topics, dead letters, commit failures."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from kafka import KafkaConsumer

from ktasks.deadletter import int_header
from ktasks.message import Message, decode, encode
from tests.fixtures.worker import wait_effects
from tests.helpers import create_topic, wait_until


def read_topic(bootstrap: str, topic: str, count: int, timeout_s: float = 60.0) -> list[Any]:
    """Read ``count`` records from the start of ``topic`` without a group (commits nothing)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, consumer_timeout_ms=1000)
    records: list[Any] = []
    try:
        wait_until(lambda: records.extend(r for batch in consumer.poll(500).values() for r in batch)
                   or len(records) >= count, timeout_s, message=f"{count} records on {topic}")
    finally:
        consumer.close()
    return records


def headers(record: Any) -> dict[str, str]:
    """Text headers; Spring's binary int headers are read with ``int_header``."""
    return {k: v.decode("utf-8", "replace") for k, v in record.headers}


def test_retries_wait_for_their_due_time_with_growing_delays_while_the_partition_goes_on(
        project: Any) -> None:
    p = project("""
        @app.task(bind=True, max_retries=3, retry_backoff_s=0.3, retry_jitter=False)
        def flaky(ctx, n):
            effect("attempt", n=n, attempt=ctx.attempt, due=ctx.message.due)
            if ctx.attempt < 3:
                raise IOError("not yet")
            effect("done", n=n)

        @app.task
        def quick(n):
            effect("quick", n=n)
    """, partitions=1)
    w = p.worker("-c", "2")
    w.wait_assigned()
    p.app_module.flaky.delay(1)
    for n in range(30):
        p.app_module.quick.delay(n)
    p.app.flush()
    wait_effects(p, "done", 1, timeout_s=60)
    attempts = sorted(p.effects("attempt"), key=lambda e: e["attempt"])
    assert [e["attempt"] for e in attempts] == [0, 1, 2, 3]
    for e in attempts[1:]:
        assert e["ts"] >= e["due"], "a retry never runs before its due time"
    delays = [b["due"] - a["ts"] for a, b in zip(attempts, attempts[1:])]
    assert delays[0] < delays[1] < delays[2], f"delays grow: {delays}"
    # Waiting out the backoff did not block the partition: every quick task ran meanwhile.
    assert len(p.effects("quick")) == 30
    assert max(e["ts"] for e in p.effects("quick")) < p.effects("done")[0]["ts"]
    assert "retry 1/3" in w.log()
    assert w.stop() == 0


def test_exhausted_and_non_retriable_failures_go_to_the_dead_letter_topic_with_full_context(
        project: Any) -> None:
    p = project("""
        @app.task(max_retries=1, retry_backoff_s=0.1, retry_for=(ValueError,))
        def always_fails(n):
            effect("attempt", n=n)
            raise ValueError(f"bad value {n}")

        @app.task(retry_for=(ValueError,))
        def wrong_kind(n):
            raise KeyError(n)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    p.app_module.always_fails.apply_async(args=(7,), key="k7")
    p.app_module.wrong_kind.delay(8)
    p.app.flush()
    dlt = read_topic(p.bootstrap, p.topic + ".DLT", 2)
    by_reason = {headers(r)["ktasks-dlt-reason"]: r for r in dlt}
    assert set(by_reason) == {"retries-exhausted", "not-retriable"}

    exhausted = headers(by_reason["retries-exhausted"])
    assert exhausted["kafka_dlt-original-topic"] == p.topic + ".retry-200ms"
    assert exhausted["kafka_dlt-exception-fqcn"] == "ValueError"
    assert exhausted["kafka_dlt-exception-message"] == "bad value 7"
    assert "ValueError: bad value 7" in exhausted["kafka_dlt-exception-stacktrace"]
    assert exhausted["kafka_dlt-original-consumer-group"] == p.group
    assert exhausted["ktasks-dlt-attempts"] == "2"
    assert exhausted["ktasks-origin-topic"] == p.topic
    for name in ("ktasks-dlt-host", "ktasks-task", "ktasks-id", "ktasks-dlt-time"):
        assert exhausted.get(name), name
    raw = by_reason["retries-exhausted"].headers
    assert int_header(raw, "kafka_dlt-original-partition") == 0
    assert int_header(raw, "kafka_dlt-original-offset") is not None
    assert int_header(raw, "kafka_dlt-original-timestamp") == by_reason["retries-exhausted"].timestamp or \
        int_header(raw, "kafka_dlt-original-timestamp") > 0
    assert by_reason["retries-exhausted"].key == b"k7"
    assert len(p.effects("attempt")) == 2

    wrong = headers(by_reason["not-retriable"])
    assert wrong["kafka_dlt-original-topic"] == p.topic
    assert wrong["kafka_dlt-exception-fqcn"] == "KeyError"
    assert wrong["ktasks-dlt-attempts"] == "1"
    # The original payload is kept unchanged: it decodes to the same call.
    from ktasks.message import decode

    assert decode(by_reason["not-retriable"].value).args == [8]
    assert w.stop() == 0


def test_retriable_commit_errors_are_retried_then_succeed(project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def job(n):
            effect("ran", n=n)
    """, partitions=1)
    w = p.worker("-c", "1", env={"KTASKS_FAULTS": "commit=raise-retriable*4"})
    w.wait_assigned()
    for n in range(20):
        p.app_module.job.delay(n)
    p.app.flush()
    wait_effects(p, "ran", 20)
    wait_until(lambda: p.committed(kafka_admin).get(0) == 20, 30, message="committed after retries")
    log = w.log()
    assert "offset commit failed" in log and "retriable; retry 4" in log
    # The commit is asynchronous: the broker may hold the offset a loop turn before the worker logs it.
    wait_until(lambda: "offset commit succeeded again after 4 failures" in w.log(), 10,
               message="the worker saw its commit succeed")
    assert w.stop() == 0


def test_exhausted_commit_retries_report_commit_failed_records_and_nothing_runs_twice(
        project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def job(n):
            effect("ran", n=n)
    """, partitions=1, commit_retry_deadline_ms=1000)
    w = p.worker("-c", "1", env={"KTASKS_FAULTS": "commit=raise-retriable*7"})
    w.wait_assigned()
    for n in range(10):
        p.app_module.job.delay(n)
    p.app.flush()
    dlt = read_topic(p.bootstrap, p.topic + ".DLT", 10)
    assert {headers(r)["ktasks-dlt-reason"] for r in dlt} == {"commit-failed"}
    wait_until(lambda: p.committed(kafka_admin).get(0) == 10, 60, message="committed once the broker recovers")
    ran = p.effects("ran")
    assert sorted(e["n"] for e in ran) == list(range(10)), "the ledger kept redelivered tasks from running again"
    assert "reporting finished records as commit-failed" in w.log()
    assert "restarting" in w.log()
    assert w.stop() == 0


def test_failed_dead_letter_publish_leaves_the_offset_uncommitted(project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task(retry_for=(IOError,))
        def broken(n):
            raise KeyError(n)

        @app.task
        def fine(n):
            effect("fine", n=n)
    """, partitions=1, shutdown_timeout_ms=3000)    # the stop waits that long for the copy, in vain
    w = p.worker("-c", "1", env={"KTASKS_FAULTS": "dead_letter_publish=raise"})
    w.wait_assigned()
    p.app_module.broken.delay(0)                      # offset 0: its dead letter can't be published
    for n in range(10):
        p.app_module.fine.delay(n)                    # offsets 1..10 finish
    p.app.flush()
    wait_effects(p, "fine", 10)
    wait_until(lambda: w.log().count("publishing dead-letter record") >= 2, 30,
               message="the dead-letter publish was retried")
    assert p.committed(kafka_admin).get(0) in (None, 0), "offset 0 was never committed: it comes again"
    # 4: the records that finished behind it were left uncommitted (they come again).
    assert w.stop(timeout_s=120) == 4


def test_dlq_replay_runs_a_fixed_task_to_success(project: Any) -> None:
    p = project("""
        @app.task(retry_for=(IOError,))
        def charge(order):
            if not os.path.exists(EFFECTS + ".fixed"):
                raise RuntimeError("payment provider rejected " + order)
            effect("charged", order=order)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    p.app_module.charge.delay("o-1")
    p.app.flush()
    read_topic(p.bootstrap, p.topic + ".DLT", 1)
    (p.dir / "effects.jsonl.fixed").write_text("")    # the bug is fixed
    env = {"PYTHONPATH": str(p.dir)}
    import os

    out = subprocess.run([sys.executable, "-m", "ktasks", "dlq", "replay", "--all", "-A", f"{p.module}:app"],
                         cwd=p.dir, env={**os.environ, **env}, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    charged = wait_effects(p, "charged", 1)
    assert [e["order"] for e in charged] == ["o-1"]
    assert w.stop() == 0


def test_countdown_delays_a_task_without_blocking_the_task_topic(project: Any) -> None:
    p = project("""
        @app.task(bind=True)
        def later(ctx, n):
            effect("later", n=n, due=ctx.message.due)

        @app.task
        def now(n):
            effect("now", n=n)
    """, partitions=1)
    w = p.worker("-c", "2")
    w.wait_assigned()
    handle = p.app_module.later.apply_async(args=(1,), countdown_s=1.5)
    assert handle.topic == p.topic + ".retry-1000ms"
    for n in range(10):
        p.app_module.now.delay(n)
    p.app.flush()
    [later] = wait_effects(p, "later", 1)
    assert later["ts"] >= later["due"], "a delayed task never runs before its due time"
    assert max(e["ts"] for e in p.effects("now")) < later["ts"], "the task topic went on meanwhile"
    assert w.stop() == 0


def test_a_task_due_later_never_freezes_the_task_topic(project: Any) -> None:
    p = project("""
        @app.task
        def note(n):
            effect("note", n=n)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    # An envelope due in two hours, straight on the task topic (another producer, a clock ahead).
    later = Message(task=f"{p.module}.note", args=[-1], due=time.time() + 7200)
    p.app.send_raw(p.topic, encode(later))
    for n in range(3):
        p.app_module.note.delay(n)
    p.app.flush()
    wait_effects(p, "note", 3, timeout_s=30)
    assert sorted(e["n"] for e in p.effects("note")) == [0, 1, 2]
    moved = read_topic(p.bootstrap, p.app.retry_topic(p.topic, 5000), 1)
    assert decode(moved[0].value).id == later.id, "the record waits in the largest delay tier instead"
    assert w.stop() == 0


def test_a_long_countdown_never_holds_a_task_due_sooner(project: Any) -> None:
    from ktasks.schedule.topics import scheduled_topic

    p = project("""
        @app.task
        def note(n):
            effect("note", n=n)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    first = p.app_module.note.apply_async(args=(-1,), countdown_s=7200)     # two hours
    second = p.app_module.note.apply_async(args=(1,), countdown_s=4.5)      # a delay tier
    # Beyond the largest delay tier (5 s here) a countdown waits in the scheduled topic
    # (docs/scheduling.md), never in a tier where it could hold what is due sooner.
    assert first.topic == scheduled_topic(p.app)
    assert second.topic in p.app.retry_topics(p.topic)
    p.app.flush()
    [ran] = wait_effects(p, "note", 1, timeout_s=40)
    assert ran["n"] == 1
    w.wait_for_log("holding ")
    assert "until" in w.log()
    assert w.stop() == 0


def test_a_retry_copy_too_large_for_the_broker_is_shrunk_or_dead_lettered_without_its_value(
        project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task(bind=True, max_retries=2, retry_jitter=False)
        def fails(ctx, payload):
            effect("attempt", size=len(payload), attempt=ctx.attempt)
            if ctx.attempt == 0:
                raise ValueError("e" * 3000)      # a long error: a 1,000-byte ktasks-last-error header

        @app.task
        def fails_later(payload):
            effect("attempt", size=len(payload), attempt=0)
            while not os.path.exists(EFFECTS + ".go"):
                time.sleep(0.02)
            raise ValueError("e" * 3000)

        @app.task
        def note(n):
            effect("note", n=n)
    """, partitions=1)
    # The delay tiers take records of up to 2,000 bytes; the task topic takes the usual 1 MB.
    for tier in (200, 1000, 5000):
        create_topic(kafka_admin, p.app.retry_topic(p.topic, tier), configs={"max.message.bytes": "2000"})
    w = p.worker("-c", "2")
    w.wait_assigned()
    p.app_module.fails.delay("s" * 900)      # its copy fits once the error header is left out
    p.app_module.fails_later.delay("h" * 2100)     # its copy never fits
    p.app_module.note.delay(1)
    p.app.flush()
    # One after the other: the producer fails a whole batch that holds a record too large.
    wait_until(lambda: any(e["attempt"] == 1 for e in p.effects("attempt")), 60, message="first retried")
    (p.dir / "effects.jsonl.go").write_text("")
    wait_until(lambda: p.committed(kafka_admin).get(0) == 3, 60,
               message="the partition moved on past both failed tasks")
    attempts = sorted((e["size"], e["attempt"]) for e in p.effects("attempt"))
    assert attempts == [(900, 0), (900, 1), (2100, 0)], attempts
    [dead] = read_topic(p.bootstrap, p.topic + ".DLT", 1)
    h = headers(dead)
    assert h["ktasks-dlt-reason"] == "too-large"
    assert not dead.value, "sent without its value"
    assert "2" in h["ktasks-dlt-value-dropped"] and "too large" in h["ktasks-dlt-value-dropped"]
    assert int_header(dead.headers, "kafka_dlt-original-offset") == 1
    assert w.stop() == 0
