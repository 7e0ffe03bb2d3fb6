"""Periodic commits sent with commit_async: one in flight, outcomes handed back to the loop.

The first tests drive :class:`AsyncCommitter` with a stand-in that only records the
callback kafka-python would call (no broker needed to check the bookkeeping); the
last one commits through a real consumer and reads the offset back from the broker.
"""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import CoordinatorNotAvailableError, KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from ktasks.worker.async_commit import AsyncCommitter
from tests.helpers import UniqueNames, create_topic, wait_until


class CallbackRecorder:
    """Has ``commit_async`` like ``KafkaConsumer``; keeps the callbacks for the test to answer."""

    def __init__(self, raises: BaseException | None = None) -> None:
        self.calls: list[tuple[Any, Any]] = []
        self.raises = raises

    def commit_async(self, offsets: Any, callback: Any) -> None:
        if self.raises is not None:
            raise self.raises
        self.calls.append((offsets, callback))


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


OFFSETS = {TopicPartition("t", 0): OffsetAndMetadata(5, "", -1)}


def test_one_commit_in_flight_and_its_success_is_reported_once() -> None:
    consumer, clock = CallbackRecorder(), Clock()
    c = AsyncCommitter(timeout_s=5.0, clock=clock)
    assert c.send(consumer, OFFSETS, "ctx")
    assert c.in_flight
    assert not c.send(consumer, {TopicPartition("t", 0): OffsetAndMetadata(9, "", -1)})   # refused
    assert len(consumer.calls) == 1
    assert c.poll() is None                 # not answered yet
    clock.now += 1.5
    offsets, callback = consumer.calls[0]
    callback(offsets, object())             # kafka-python passes the response on success
    assert c.in_flight                      # answered, not yet collected by the loop
    outcome = c.poll()
    assert outcome is not None and outcome.error is None
    assert outcome.offsets == OFFSETS and outcome.context == "ctx" and outcome.elapsed_s == 1.5
    assert c.poll() is None and not c.in_flight
    assert c.send(consumer, OFFSETS)        # the next one may go


def test_a_failed_commit_hands_its_exception_to_the_loop() -> None:
    consumer = CallbackRecorder()
    c = AsyncCommitter(timeout_s=5.0)
    c.send(consumer, OFFSETS)
    offsets, callback = consumer.calls[0]
    error = CoordinatorNotAvailableError("coordinator moved")
    callback(offsets, error)
    outcome = c.poll()
    assert outcome is not None and outcome.error is error and outcome.error.retriable


def test_an_error_raised_by_the_send_itself_is_an_outcome_not_an_exception() -> None:
    c = AsyncCommitter(timeout_s=5.0)
    assert c.send(CallbackRecorder(raises=KafkaTimeoutError("no coordinator")), OFFSETS)
    outcome = c.poll()
    assert outcome is not None and isinstance(outcome.error, KafkaTimeoutError)
    assert not c.in_flight


def test_an_unanswered_commit_is_given_up_at_its_deadline_and_its_late_answer_ignored() -> None:
    consumer, clock = CallbackRecorder(), Clock()
    c = AsyncCommitter(timeout_s=5.0, clock=clock)
    c.send(consumer, OFFSETS)
    clock.now += 4.9
    assert c.poll() is None and c.in_flight
    clock.now += 0.2
    outcome = c.poll()
    assert outcome is not None and isinstance(outcome.error, KafkaTimeoutError)
    assert outcome.error.retriable and "not answered" in str(outcome.error)
    later = {TopicPartition("t", 0): OffsetAndMetadata(7, "", -1)}
    assert c.send(consumer, later)
    offsets, late_callback = consumer.calls[0]
    late_callback(offsets, object())        # the abandoned commit answers after all
    assert c.poll() is None and c.in_flight  # still waiting for the second one
    offsets2, callback2 = consumer.calls[1]
    callback2(offsets2, object())
    outcome = c.poll()
    assert outcome is not None and outcome.offsets == later and outcome.error is None


def test_commits_through_a_real_consumer_land_on_the_broker(kafka_bootstrap: str, kafka_admin: Any,
                                                           unique: UniqueNames) -> None:
    topic, group = unique("acommit"), unique("acommit-g")
    create_topic(kafka_admin, topic)
    producer = KafkaProducer(bootstrap_servers=kafka_bootstrap)
    for i in range(3):
        producer.send(topic, b"x%d" % i)
    producer.flush(10)
    producer.close()
    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False)
    try:
        consumer.assign([tp])
        c = AsyncCommitter(timeout_s=30.0)
        offsets = {tp: OffsetAndMetadata(2, "map", -1)}
        failures: list[BaseException] = []

        def committed_once() -> bool:
            # A consumer that has not looked its coordinator up yet gets a retriable
            # CoordinatorNotAvailableError at once (commit_async does not retry): send again,
            # as the worker's commit-retry logic does.
            if not c.in_flight:
                assert c.send(consumer, offsets, "ctx")
            consumer.poll(timeout_ms=50)    # kafka-python runs commit callbacks from poll()
            outcome = c.poll()
            if outcome is None:
                return False
            assert outcome.context == "ctx"
            if outcome.error is not None:
                assert getattr(outcome.error, "retriable", False), outcome.error
                failures.append(outcome.error)
                return False
            return True

        wait_until(committed_once, timeout_s=30)
        assert len(failures) < 20
        committed = consumer.committed(tp, metadata=True)
        assert committed is not None and (committed.offset, committed.metadata) == (2, "map")
    finally:
        consumer.close()
