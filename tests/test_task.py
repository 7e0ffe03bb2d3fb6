"""Tasks: decoration options, delay/apply_async, handles, and key -> partition routing."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from ktasks import ConfigurationError, EagerResult, Retry, SendHandle, SentRecord
from ktasks.message import decode, header
from ktasks.task import TaskOptions


def test_calling_the_task_runs_it_in_process(app, topic_end_offsets):
    @app.task
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3) == 5
    assert add.__name__ == "add" and add.__doc__ is None
    assert topic_end_offsets(add.topic) == {}  # nothing was sent


def test_delay_returns_a_handle_that_waits_for_the_broker(app, read_records):
    @app.task
    def job(x: int) -> None: ...

    handle = job.delay(7)
    assert isinstance(handle, SendHandle) and len(handle.id) == 32 and handle.topic == job.topic
    sent = handle.wait_sent(timeout=30)
    assert isinstance(sent, SentRecord) and sent.topic == job.topic and sent.offset == 0
    assert handle.sent
    [record] = read_records(job.topic, min_count=1)
    assert (record.partition, record.offset) == (sent.partition, sent.offset)
    assert decode(record.value).id == handle.id == header(record.headers, "ktasks-id")


def test_apply_async_options_reach_the_record(app, read_records, unique):
    other = unique("other")

    @app.task
    def job(*args: Any, **kwargs: Any) -> None: ...

    handle = job.apply_async(args=(1,), kwargs={"k": "v"}, key=b"customer-1", task_id="my-id",
                             idempotency_key="charge-7", headers={"trace": "t-1", "bin": b"\x00"},
                             topic=other, countdown_s=30)
    # A countdown sends the task to the retry topic of its delay tier, to wait there.
    assert handle.id == "my-id" and handle.topic == other + ".retry-10000ms"
    handle.wait_sent()
    [record] = read_records(handle.topic, min_count=1)
    message = decode(record.value)
    assert (message.id, message.args, message.kwargs) == ("my-id", [1], {"k": "v"})
    assert message.idempotency_key == "charge-7" and message.ledger_key == "charge-7"
    assert message.due == pytest.approx(message.created + 30)
    assert record.key == b"customer-1"
    assert header(record.headers, "trace") == "t-1" and dict(record.headers)["bin"] == b"\x00"
    assert header(record.headers, "ktasks-origin-topic") == other


def test_same_key_same_partition_as_kafka_pythons_murmur2(app, read_records):
    @app.task
    def job(i: int) -> None: ...

    keys = [f"customer-{n}" for n in range(12)] + ["żółw"]
    handles = {key: [job.apply_async(args=(i,), key=key) for i in range(10)] for key in keys}
    handles[b"\x00raw"] = [job.apply_async(args=(i,), key=b"\x00raw") for i in range(10)]  # type: ignore[index]
    partitions = {}
    for key, hs in handles.items():
        seen = {h.wait_sent().partition for h in hs}
        assert len(seen) == 1, f"key {key!r} went to partitions {seen}"
        raw = key.encode() if isinstance(key, str) else key
        partitions[key] = seen.pop()
        assert partitions[key] == (murmur2(raw) & 0x7FFFFFFF) % 3
    assert len(set(partitions.values())) > 1  # 14 keys do not all hash to one partition
    # In order within a key: offsets grow in send order on that partition.
    records = read_records(job.topic, min_count=14 * 10)
    by_key: dict[bytes, list[int]] = {}
    for r in records:
        by_key.setdefault(r.key, []).append(decode(r.value).args[0])
    assert all(seq == list(range(10)) for seq in by_key.values())


def test_unkeyed_messages_spread_across_partitions(app):
    @app.task
    def job(i: int) -> None: ...

    counts: Counter[int] = Counter()
    for _ in range(20):  # several batches: the sticky partitioner moves on after each
        handles = [job.delay(i) for i in range(10)]
        app.flush()
        counts.update(h.wait_sent().partition for h in handles)
    assert sum(counts.values()) == 200
    assert len(counts) >= 2, counts


def test_decoration_options_are_stored_and_checked(app):
    @app.task(name="opts.job", topic="t1", partitions=9, bind=True, max_retries=5, retry_for=KeyError,
              retry_backoff=2, retry_backoff_max=30, retry_jitter=False, soft_time_limit=10, time_limit=12,
              max_starts=4)
    def job(ctx: Any) -> None: ...

    o = job.options
    assert (o.name, o.topic, o.partitions, o.bind, o.max_retries) == ("opts.job", "t1", 9, True, 5)
    assert o.retry_for == (KeyError,)
    assert (o.retry_backoff_s, o.retry_backoff_max_s, o.retry_jitter) == (2, 30, False)
    assert (o.soft_time_limit_s, o.time_limit_s, o.max_starts) == (10, 12, 4)
    assert job.topic == "t1" and job.max_retries() == 5 and job.max_starts() == 4
    with pytest.raises(ConfigurationError, match="unknown option 'retries'"):
        app.task(retries=3)(lambda: None)
    with pytest.raises(ConfigurationError, match="max_retries"):
        app.task(max_retries=-1)(lambda: None)
    with pytest.raises(ConfigurationError, match="not both"):
        TaskOptions.build("x", {"time_limit": 1, "time_limit_s": 2})


def test_defaults_come_from_the_app_settings(make_app):
    app = make_app(max_retries=2, max_starts=7, retry_backoff_ms=500, retry_backoff_max_ms=3000,
                   retry_jitter=False)

    @app.task
    def job() -> None: ...

    assert job.topic == app.default_topic and job.max_retries() == 2 and job.max_starts() == 7
    assert [job.backoff_s(a) for a in range(5)] == [0.5, 1.0, 2.0, 3.0, 3.0]


def test_retry_policy():
    from ktasks import App

    app = App("policy", max_retries=3)

    @app.task(retry_for=(ConnectionError,), retry_backoff_s=1.0, retry_backoff_max_s=8.0)
    def job() -> None: ...

    assert job.should_retry(ConnectionError(), 0) and job.should_retry(ConnectionRefusedError(), 2)
    assert not job.should_retry(ConnectionError(), 3)  # out of retries
    assert not job.should_retry(ValueError(), 0)  # not in retry_for
    assert job.should_retry(job.retry(countdown_s=5), 0)  # an explicit Retry always counts
    retry = job.retry(countdown_s=5, exc=ValueError("x"))
    assert isinstance(retry, Retry) and retry.countdown_s == 5 and isinstance(retry.exc, ValueError)
    rng = random.Random(1)
    for attempt in range(6):
        full = min(8.0, 2.0**attempt)
        assert full / 2 <= job.backoff_s(attempt, rng) <= full  # jitter stays within half..full


def test_eager_result():
    ok = EagerResult("id", 5)
    assert ok.get() == 5 and ok.wait_sent() is None
    failed = EagerResult("id", exc=KeyError("k"))
    with pytest.raises(KeyError):
        failed.get()
