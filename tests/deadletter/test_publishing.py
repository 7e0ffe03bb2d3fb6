"""Publishing dead letters against the real broker: partition choice and every header; size errors."""

from __future__ import annotations

from typing import Any

from ktasks import App
from ktasks.deadletter import (
    H_ATTEMPTS,
    H_EXC_FQCN,
    H_EXC_MESSAGE,
    H_EXC_STACKTRACE,
    H_HOST,
    H_ORIGIN_TOPIC,
    H_ORIGINAL_GROUP,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TIMESTAMP,
    H_ORIGINAL_TOPIC,
    H_REASON,
    H_TIME,
    int_header,
    is_too_large,
    iter_dead_letters,
    publish,
)
from ktasks.message import HEADER_ID, header
from tests.deadletter.samples import TIMEOUT_S, envelope, sample
from tests.fixtures.app import read_topic
from tests.helpers import UniqueNames, create_topic


def test_publish_lands_on_the_same_partition_with_every_header(app: App, kafka_admin: Any,
                                                               kafka_bootstrap: str,
                                                               unique: UniqueNames) -> None:
    origin = unique("orders")
    create_topic(kafka_admin, origin, partitions=5)
    dl = sample(topic=origin, partition=3)
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
    meta = publish(app, sample(topic=origin, partition=5)).get(timeout=TIMEOUT_S)
    assert meta.topic == f"{origin}.DLT" and meta.partition in (0, 1)
    # The caller may pass the partition count it already knows.
    meta = publish(app, sample(topic=origin, partition=1), dlt_partitions=2).get(timeout=TIMEOUT_S)
    assert meta.partition == 1


def test_retry_topic_record_goes_to_its_task_topics_dead_letter_topic(
        app: App, kafka_admin: Any, unique: UniqueNames) -> None:
    origin = unique("orders")
    retry_topic = app.retry_topic(origin, 1000)
    create_topic(kafka_admin, origin, partitions=3)
    create_topic(kafka_admin, retry_topic, partitions=3)
    _, encoded, hdrs = envelope()
    hdrs.append((H_ORIGIN_TOPIC, origin.encode()))
    # The worker reads the origin from the header of a retry-topic record (trusted there) and passes it.
    dl = sample(topic=retry_topic, partition=2, value=encoded, headers=hdrs, origin_topic=origin)
    meta = publish(app, dl).get(timeout=TIMEOUT_S)
    assert (meta.topic, meta.partition) == (f"{origin}.DLT", 2)
    [stored] = list(iter_dead_letters(app, [f"{origin}.DLT"], idle_timeout_s=TIMEOUT_S))
    assert stored.original_topic == retry_topic and stored.origin_topic() == origin


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
