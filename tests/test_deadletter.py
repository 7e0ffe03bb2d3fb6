"""Dead-letter records: headers, payload, partition choice, reading back, replay and purge (real broker)."""

from __future__ import annotations

import struct
from typing import Any

import pytest

from ktasks import App
from ktasks.deadletter import (
    H_ATTEMPTS,
    H_EXC_FQCN,
    H_EXC_MESSAGE,
    H_EXC_STACKTRACE,
    H_FORCE,
    H_HOST,
    H_ORIGIN_TOPIC,
    H_ORIGINAL_GROUP,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TIMESTAMP,
    H_ORIGINAL_TIMESTAMP_TYPE,
    H_ORIGINAL_TOPIC,
    H_REASON,
    H_REPLAY,
    H_TIME,
    H_VALUE_DROPPED,
    MAX_STACKTRACE_BYTES,
    REASONS,
    DeadLetter,
    dead_letter_record,
    dead_letter_topics,
    exception_info,
    int_header,
    is_too_large,
    iter_dead_letters,
    pending_counts,
    publish,
    purge,
    replay,
    replay_headers,
    without_value,
)
from ktasks.message import HEADER_ID, HEADER_TASK, Message, encode, header, headers_of
from tests.fixtures.app import read_topic
from tests.helpers import UniqueNames, create_topic

TIMEOUT_S = 20.0


def _envelope(task: str = "billing.charge", args: list[Any] | None = None) -> tuple[Message, bytes,
                                                                                  list[tuple[str, bytes]]]:
    message = Message(task=task, args=args if args is not None else [42], kwargs={"currency": "EUR"})
    return message, encode(message), headers_of(message, {"trace": "abc"})


def _boom() -> BaseException:
    try:
        raise ValueError("card declined")
    except ValueError as exc:
        return exc


def _dead_letter(topic: str = "orders", partition: int = 2, value: bytes | None = None,
                 headers: list[tuple[str, bytes]] | None = None, **kw: Any) -> DeadLetter:
    message, encoded, hdrs = _envelope()
    exc_type, exc_message, stack = exception_info(_boom())
    fields: dict[str, Any] = dict(
        value=encoded if value is None else value, key=b"customer-7",
        headers=hdrs if headers is None else headers, topic=topic, partition=partition, offset=1234,
        timestamp_ms=1_700_000_000_123, origin_topic=topic, reason="retries-exhausted",
        exc_type=exc_type, exc_message=exc_message, stacktrace=stack, attempts=4, group="billing",
        host="worker-1", timestamp_type=0,
    )
    fields.update(kw)
    return DeadLetter(**fields)


# -- the record, without a broker ------------------------------------------------------

def test_record_carries_every_header_and_keeps_the_original_payload() -> None:
    dl = _dead_letter()
    value, key, headers = dead_letter_record(dl)
    assert value == dl.value and key == b"customer-7"
    names = [k for k, _ in headers]
    # The original headers come first, unchanged.
    assert headers[: len(dl.headers)] == dl.headers
    for name in (H_ORIGINAL_TOPIC, H_ORIGINAL_PARTITION, H_ORIGINAL_OFFSET, H_ORIGINAL_TIMESTAMP,
                 H_ORIGINAL_TIMESTAMP_TYPE, H_ORIGINAL_GROUP, H_EXC_FQCN, H_EXC_MESSAGE, H_EXC_STACKTRACE,
                 H_REASON, H_ATTEMPTS, H_HOST, H_TIME, H_ORIGIN_TOPIC):
        assert names.count(name) == 1, name
    # Spring Kafka's encodings: big-endian int and longs.
    raw = dict(headers)
    assert raw[H_ORIGINAL_PARTITION] == struct.pack(">i", 2)
    assert raw[H_ORIGINAL_OFFSET] == struct.pack(">q", 1234)
    assert raw[H_ORIGINAL_TIMESTAMP] == struct.pack(">q", 1_700_000_000_123)
    assert header(headers, H_ORIGINAL_TOPIC) == "orders"
    assert header(headers, H_ORIGINAL_TIMESTAMP_TYPE) == "CreateTime"
    assert header(headers, H_ORIGINAL_GROUP) == "billing"
    assert header(headers, H_EXC_FQCN) == "ValueError"
    assert header(headers, H_EXC_MESSAGE) == "card declined"
    stack = header(headers, H_EXC_STACKTRACE) or ""
    assert "Traceback" in stack and "_boom" in stack and "ValueError: card declined" in stack
    assert header(headers, H_REASON) == "retries-exhausted"
    assert int_header(headers, H_ATTEMPTS) == 4
    assert header(headers, H_HOST) == "worker-1"
    assert (header(headers, H_TIME) or "").endswith("Z")
    assert header(headers, H_ORIGIN_TOPIC) == "orders"
    assert header(headers, HEADER_TASK) == "billing.charge"


def test_earlier_dead_letter_headers_are_replaced_not_repeated() -> None:
    first = _dead_letter()
    _, _, once = dead_letter_record(first)
    again = _dead_letter(headers=once, reason="failed", attempts=1, exc_message="second")
    _, _, twice = dead_letter_record(again)
    names = [k for k, _ in twice]
    for name in (H_ORIGINAL_TOPIC, H_REASON, H_EXC_MESSAGE, H_ORIGIN_TOPIC):
        assert names.count(name) == 1, name
    assert header(twice, H_REASON) == "failed"
    assert header(twice, H_EXC_MESSAGE) == "second"
    assert header(twice, "trace") == "abc"


def test_the_origin_is_the_one_the_worker_decided_never_the_records_header() -> None:
    message, encoded, hdrs = _envelope()
    hdrs.append((H_ORIGIN_TOPIC, b"somewhere-else"))  # on a task topic, anyone could have set it
    dl = _dead_letter(topic="orders.retry-1000ms", headers=hdrs, value=encoded, origin_topic="orders")
    assert dl.effective_origin_topic == "orders"
    _, _, headers = dead_letter_record(dl)
    assert header(headers, H_ORIGINAL_TOPIC) == "orders.retry-1000ms"
    assert [v for k, v in headers if k == H_ORIGIN_TOPIC] == [b"orders"]


def test_every_reason_is_accepted_and_others_are_not() -> None:
    for reason in REASONS:
        _dead_letter(reason=reason)
    with pytest.raises(ValueError, match="reason"):
        _dead_letter(reason="bad-luck")


def test_missing_exception_and_tombstone_value() -> None:
    dl = _dead_letter(value=None, reason="undecodable", exc_type=None, exc_message=None, stacktrace=None)
    dl.value = None
    value, _, headers = dead_letter_record(dl)
    assert value is None
    names = {k for k, _ in headers}
    assert not names & {H_EXC_FQCN, H_EXC_MESSAGE, H_EXC_STACKTRACE}
    assert header(headers, H_REASON) == "undecodable"


def test_huge_stack_trace_is_cut_keeping_both_ends() -> None:
    stack = "Traceback (most recent call last):\n" + "  frame\n" * 50_000 + "ValueError: the end\n"
    _, _, headers = dead_letter_record(_dead_letter(stacktrace=stack))
    kept = dict(headers)[H_EXC_STACKTRACE]
    assert len(kept) <= MAX_STACKTRACE_BYTES
    text = kept.decode()
    assert text.startswith("Traceback") and text.rstrip().endswith("ValueError: the end")
    assert "bytes cut by ktasks" in text


def test_record_fits_a_size_budget() -> None:
    stack = "x" * 60_000
    big_value = b"v" * 900_000
    value, key, headers = dead_letter_record(_dead_letter(value=big_value, stacktrace=stack),
                                             max_bytes=1_000_000)
    assert value == big_value
    size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
    assert size < 1_000_000


def test_from_consumer_record_and_exception() -> None:
    class Rec:
        topic, partition, offset, timestamp, timestamp_type = "orders", 1, 9, 1000, 1
        key, value, headers = None, b"\x00garbage", [("x", b"y")]

    dl = DeadLetter.from_record(Rec(), "failed", exc=_boom(), attempts=1, group="g")
    assert (dl.topic, dl.partition, dl.offset, dl.origin_topic) == ("orders", 1, 9, "orders")
    assert dl.exc_type == "ValueError" and dl.exc_message == "card declined"
    assert dl.stacktrace and "card declined" in dl.stacktrace
    _, _, headers = dead_letter_record(dl)
    assert header(headers, H_ORIGINAL_TIMESTAMP_TYPE) == "LogAppendTime"


def test_replay_headers_drop_dead_letter_ones_and_mark_the_replay() -> None:
    _, _, headers = dead_letter_record(_dead_letter())
    plain = replay_headers(headers)
    assert not [k for k, _ in plain if k.startswith(("kafka_dlt-", "ktasks-dlt-")) or k == H_ORIGIN_TOPIC]
    assert (H_REPLAY, b"1") in plain and H_FORCE not in dict(plain)
    forced = replay_headers(headers, force=True)
    assert (H_FORCE, b"1") in forced
    # A forced replay that failed again must not stay forced on the next, plain replay.
    assert replay_headers(forced).count((H_REPLAY, b"1")) == 1
    assert H_FORCE not in dict(replay_headers(forced))


# -- against the broker (the `app` fixture: tests/fixtures/app.py) --------------------------

def test_publish_lands_on_the_same_partition_with_every_header(app: App, kafka_admin: Any,
                                                               kafka_bootstrap: str,
                                                               unique: UniqueNames) -> None:
    origin = unique("orders")
    create_topic(kafka_admin, origin, partitions=5)
    dl = _dead_letter(topic=origin, partition=3)
    meta = publish(app, dl).get(timeout=TIMEOUT_S)
    assert meta.topic == f"{origin}.DLT" and meta.partition == 3
    # Created with as many partitions as its origin.
    assert app.topics.partitions_of(f"{origin}.DLT") == 5

    [record] = read_topic(kafka_bootstrap, f"{origin}.DLT", 1)
    assert record.partition == 3
    assert record.value == dl.value and record.key == dl.key
    headers = list(record.headers)
    assert header(headers, H_ORIGINAL_TOPIC) == origin
    assert int_header(headers, H_ORIGINAL_PARTITION) == 3
    assert int_header(headers, H_ORIGINAL_OFFSET) == 1234
    assert int_header(headers, H_ORIGINAL_TIMESTAMP) == 1_700_000_000_123
    assert header(headers, H_ORIGINAL_GROUP) == "billing"
    assert header(headers, H_EXC_FQCN) == "ValueError"
    assert header(headers, H_EXC_MESSAGE) == "card declined"
    assert "card declined" in (header(headers, H_EXC_STACKTRACE) or "")
    assert header(headers, H_REASON) == "retries-exhausted"
    assert header(headers, H_ATTEMPTS) == "4"
    assert header(headers, H_HOST) == "worker-1"
    assert header(headers, H_TIME)
    assert header(headers, H_ORIGIN_TOPIC) == origin
    assert header(headers, HEADER_ID) == header(dl.headers, HEADER_ID)

    # Read back through the library: every field parses.
    [stored] = list(iter_dead_letters(app, [f"{origin}.DLT"], idle_timeout_s=TIMEOUT_S))
    assert (stored.partition, stored.original_partition, stored.original_offset) == (3, 3, 1234)
    assert stored.original_topic == origin and stored.origin_topic() == origin
    assert stored.reason == "retries-exhausted" and stored.attempts == 4 and stored.group == "billing"
    assert stored.exc_type == "ValueError" and stored.exc_message == "card declined"
    assert stored.message is not None and stored.message.args == [42]
    assert stored.task == "billing.charge" and stored.task_id == stored.message.id
    assert stored.original_headers() == dl.headers


def test_partition_missing_in_the_dead_letter_topic_lets_the_partitioner_choose(
        app: App, kafka_admin: Any, unique: UniqueNames) -> None:
    origin = unique("orders")
    create_topic(kafka_admin, origin, partitions=6)
    create_topic(kafka_admin, f"{origin}.DLT", partitions=2)
    meta = publish(app, _dead_letter(topic=origin, partition=5)).get(timeout=TIMEOUT_S)
    assert meta.topic == f"{origin}.DLT" and meta.partition in (0, 1)
    # The caller may pass the partition count it already knows.
    meta = publish(app, _dead_letter(topic=origin, partition=1), dlt_partitions=2).get(timeout=TIMEOUT_S)
    assert meta.partition == 1


def test_retry_topic_record_goes_to_its_task_topics_dead_letter_topic(
        app: App, kafka_admin: Any, unique: UniqueNames) -> None:
    origin = unique("orders")
    retry_topic = app.retry_topic(origin, 1000)
    create_topic(kafka_admin, origin, partitions=3)
    create_topic(kafka_admin, retry_topic, partitions=3)
    _, encoded, hdrs = _envelope()
    hdrs.append((H_ORIGIN_TOPIC, origin.encode()))
    # The worker reads the origin from the header of a retry-topic record (trusted there) and passes it.
    dl = _dead_letter(topic=retry_topic, partition=2, value=encoded, headers=hdrs, origin_topic=origin)
    meta = publish(app, dl).get(timeout=TIMEOUT_S)
    assert (meta.topic, meta.partition) == (f"{origin}.DLT", 2)
    [stored] = list(iter_dead_letters(app, [f"{origin}.DLT"], idle_timeout_s=TIMEOUT_S))
    assert stored.original_topic == retry_topic and stored.origin_topic() == origin


def test_read_tail_replay_and_purge(app: App, kafka_admin: Any, kafka_bootstrap: str,
                                    unique: UniqueNames) -> None:
    origin = unique("orders")
    create_topic(kafka_admin, origin, partitions=2)
    dlt_topic = f"{origin}.DLT"
    assert dead_letter_topics(app, origin) == [dlt_topic] == dead_letter_topics(app, dlt_topic)
    # Nothing there yet: reading a topic that does not exist yields nothing and creates nothing.
    assert list(iter_dead_letters(app, [dlt_topic])) == []
    assert app.topics.partitions_of(dlt_topic) is None

    sent = []
    for i in range(5):
        dl = _dead_letter(topic=origin, partition=i % 2)
        dl.offset = i
        sent.append(dl)
        publish(app, dl).get(timeout=TIMEOUT_S)
    letters = list(iter_dead_letters(app, [dlt_topic], idle_timeout_s=TIMEOUT_S))
    assert sorted(x.original_offset or 0 for x in letters) == [0, 1, 2, 3, 4]
    tail = list(iter_dead_letters(app, [dlt_topic], tail=1, idle_timeout_s=TIMEOUT_S))
    assert sorted(x.original_offset or 0 for x in tail) == [3, 4]  # the newest of each partition

    # Replay: the original value and key back for the origin topic, through its first retry tier
    # (the worker trusts the replay marks on its retry topics only), marked.
    target = next(x for x in letters if x.original_offset == 2)
    meta = replay(app, target, force=True).get(timeout=TIMEOUT_S)
    assert meta.topic == app.retry_topic(origin, min(app.settings.retry_tiers_ms))
    [record] = read_topic(kafka_bootstrap, meta.topic, 1)
    assert record.value == sent[2].value and record.key == sent[2].key
    assert header(record.headers, H_REPLAY) == "1" and header(record.headers, H_FORCE) == "1"
    assert header(record.headers, H_ORIGIN_TOPIC) == origin
    assert not [k for k, _ in record.headers if k.startswith(("kafka_dlt-", "ktasks-dlt-"))]

    counts = pending_counts(app, [dlt_topic])
    assert sum(end - start for start, end in counts.values()) == 5
    assert purge(app, [dlt_topic]) == 5
    assert list(iter_dead_letters(app, [dlt_topic])) == []
    assert purge(app, [dlt_topic]) == 0


def test_a_dead_letter_without_its_value_says_why_and_keeps_where_it_came_from() -> None:
    dl = _dead_letter(value=b"v" * 5000, exc_message="m" * 5000, stacktrace="s" * 5000)
    small = without_value(dl, "the retry copy was rejected by the broker as too large")
    value, key, headers = dead_letter_record(small)
    assert value == b"" and key == dl.key
    assert "5000 bytes left out: the retry copy was rejected" in header(headers, H_VALUE_DROPPED)
    assert H_EXC_STACKTRACE not in dict(headers)
    assert len(dict(headers)[H_EXC_MESSAGE]) <= 1000
    assert struct.unpack(">q", dict(headers)[H_ORIGINAL_OFFSET])[0] == dl.offset
    assert dl.value == b"v" * 5000, "the original dead letter is unchanged"


def test_too_large_is_recognised_through_ktasks_errors() -> None:
    from kafka.errors import KafkaTimeoutError, MessageSizeTooLargeError

    from ktasks.errors import EnqueueError

    try:
        try:
            raise MessageSizeTooLargeError("too big")
        except MessageSizeTooLargeError as exc:
            raise EnqueueError("sending failed") from exc
    except EnqueueError as wrapped:
        assert is_too_large(wrapped)
    assert not is_too_large(KafkaTimeoutError("slow"))
    assert not is_too_large(None)
