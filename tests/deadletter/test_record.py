"""The dead-letter record format without a broker: headers, payload, size budget, reading back."""

from __future__ import annotations

import struct

import pytest

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
    int_header,
    replay_headers,
    without_value,
)
from ktasks.message import HEADER_TASK, header
from tests.deadletter.samples import boom, envelope, sample


def test_record_carries_every_header_and_keeps_the_original_payload() -> None:
    dl = sample()
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
    assert "Traceback" in stack and "in boom" in stack and "ValueError: card declined" in stack
    assert header(headers, H_REASON) == "retries-exhausted"
    assert int_header(headers, H_ATTEMPTS) == 4
    assert header(headers, H_HOST) == "worker-1"
    assert (header(headers, H_TIME) or "").endswith("Z")
    assert header(headers, H_ORIGIN_TOPIC) == "orders"
    assert header(headers, HEADER_TASK) == "billing.charge"


def test_earlier_dead_letter_headers_are_replaced_not_repeated() -> None:
    first = sample()
    _, _, once = dead_letter_record(first)
    again = sample(headers=once, reason="failed", attempts=1, exc_message="second")
    _, _, twice = dead_letter_record(again)
    names = [k for k, _ in twice]
    for name in (H_ORIGINAL_TOPIC, H_REASON, H_EXC_MESSAGE, H_ORIGIN_TOPIC):
        assert names.count(name) == 1, name
    assert header(twice, H_REASON) == "failed"
    assert header(twice, H_EXC_MESSAGE) == "second"
    assert header(twice, "trace") == "abc"


def test_the_origin_is_the_one_the_worker_decided_never_the_records_header() -> None:
    message, encoded, hdrs = envelope()
    hdrs.append((H_ORIGIN_TOPIC, b"somewhere-else"))  # on a task topic, anyone could have set it
    dl = sample(topic="orders.retry-1000ms", headers=hdrs, value=encoded, origin_topic="orders")
    assert dl.effective_origin_topic == "orders"
    _, _, headers = dead_letter_record(dl)
    assert header(headers, H_ORIGINAL_TOPIC) == "orders.retry-1000ms"
    assert [v for k, v in headers if k == H_ORIGIN_TOPIC] == [b"orders"]


def test_every_reason_is_accepted_and_others_are_not() -> None:
    for reason in REASONS:
        sample(reason=reason)
    with pytest.raises(ValueError, match="reason"):
        sample(reason="bad-luck")


def test_missing_exception_and_tombstone_value() -> None:
    dl = sample(value=None, reason="undecodable", exc_type=None, exc_message=None, stacktrace=None)
    dl.value = None
    value, _, headers = dead_letter_record(dl)
    assert value is None
    names = {k for k, _ in headers}
    assert not names & {H_EXC_FQCN, H_EXC_MESSAGE, H_EXC_STACKTRACE}
    assert header(headers, H_REASON) == "undecodable"


def test_huge_stack_trace_is_cut_keeping_both_ends() -> None:
    stack = "Traceback (most recent call last):\n" + "  frame\n" * 50_000 + "ValueError: the end\n"
    _, _, headers = dead_letter_record(sample(stacktrace=stack))
    kept = dict(headers)[H_EXC_STACKTRACE]
    assert len(kept) <= MAX_STACKTRACE_BYTES
    text = kept.decode()
    assert text.startswith("Traceback") and text.rstrip().endswith("ValueError: the end")
    assert "bytes cut by ktasks" in text


def test_record_fits_a_size_budget() -> None:
    stack = "x" * 60_000
    big_value = b"v" * 900_000
    value, key, headers = dead_letter_record(sample(value=big_value, stacktrace=stack),
                                             max_bytes=1_000_000)
    assert value == big_value
    size = len(value or b"") + len(key or b"") + sum(len(k) + len(v) for k, v in headers)
    assert size < 1_000_000


def test_from_consumer_record_and_exception() -> None:
    class Rec:
        topic, partition, offset, timestamp, timestamp_type = "orders", 1, 9, 1000, 1
        key, value, headers = None, b"\x00garbage", [("x", b"y")]

    dl = DeadLetter.from_record(Rec(), "failed", exc=boom(), attempts=1, group="g")
    assert (dl.topic, dl.partition, dl.offset, dl.origin_topic) == ("orders", 1, 9, "orders")
    assert dl.exc_type == "ValueError" and dl.exc_message == "card declined"
    assert dl.stacktrace and "card declined" in dl.stacktrace
    _, _, headers = dead_letter_record(dl)
    assert header(headers, H_ORIGINAL_TIMESTAMP_TYPE) == "LogAppendTime"


def test_replay_headers_drop_dead_letter_ones_and_mark_the_replay() -> None:
    _, _, headers = dead_letter_record(sample())
    plain = replay_headers(headers)
    assert not [k for k, _ in plain if k.startswith(("kafka_dlt-", "ktasks-dlt-")) or k == H_ORIGIN_TOPIC]
    assert (H_REPLAY, b"1") in plain and H_FORCE not in dict(plain)
    forced = replay_headers(headers, force=True)
    assert (H_FORCE, b"1") in forced
    # A forced replay that failed again must not stay forced on the next, plain replay.
    assert replay_headers(forced).count((H_REPLAY, b"1")) == 1
    assert H_FORCE not in dict(replay_headers(forced))


def test_a_dead_letter_without_its_value_says_why_and_keeps_where_it_came_from() -> None:
    dl = sample(value=b"v" * 5000, exc_message="m" * 5000, stacktrace="s" * 5000)
    small = without_value(dl, "the retry copy was rejected by the broker as too large")
    value, key, headers = dead_letter_record(small)
    assert value == b"" and key == dl.key
    assert "5000 bytes left out: the retry copy was rejected" in header(headers, H_VALUE_DROPPED)
    assert H_EXC_STACKTRACE not in dict(headers)
    assert len(dict(headers)[H_EXC_MESSAGE]) <= 1000
    assert struct.unpack(">q", dict(headers)[H_ORIGINAL_OFFSET])[0] == dl.offset
    assert dl.value == b"v" * 5000, "the original dead letter is unchanged"
