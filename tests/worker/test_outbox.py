"""The outbox without a broker: a send that blocks (no metadata, broker down) never holds the worker's loop."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from kafka import TopicPartition

from ktasks.worker.outbox import Outbox, PendingPublish
from ktasks.worker.outcomes import Stats
from tests.helpers import wait_until
from tests.worker.statemachine import Machine

TP = TopicPartition("jobs", 0)


@dataclass
class _Metadata:
    topic: str
    partition: int
    offset: int


class _Future:
    """A send the broker acknowledged."""

    is_done = True
    exception = None

    def __init__(self, offset: int) -> None:
        self.value = _Metadata("jobs.retry-1s", 0, offset)

    def succeeded(self) -> bool:
        return True


def _outbox() -> tuple[Machine, Outbox, list[int]]:
    m = Machine()
    m.partitions.start(TP, 0)
    published: list[int] = []
    outbox = Outbox(m.app, m.partitions, Stats(), group_id="g", host="h",
                    published=lambda job: published.append(job.offset))
    return m, outbox, published


def test_a_send_that_blocks_holds_neither_the_publish_nor_the_pump() -> None:
    # kafka-python's send() waits up to max_block_ms for a topic's metadata; with the broker
    # down, each retry publish held the loop (commits, dispatch, shutdown) for send_timeout_ms.
    m, outbox, published = _outbox()
    release, returned = threading.Event(), threading.Event()

    def send() -> Any:
        release.wait(10.0)
        returned.set()
        return _Future(7)

    outbox._publish(PendingPublish(m.job(TP, 0), "retry", send))
    outbox.pump()
    assert not returned.is_set(), "the publish waited for the blocked send"
    assert len(outbox) == 1 and published == []
    release.set()

    def done() -> bool:
        outbox.pump()
        return published == [0]

    wait_until(done, 10, message="the job published once the send returned")
    assert len(outbox) == 0 and outbox.published_end == {TopicPartition("jobs.retry-1s", 0): 8}
    outbox.sender.stop()


def test_a_send_that_raises_on_the_sender_is_tried_again() -> None:
    m, outbox, published = _outbox()
    calls: list[int] = []

    def send() -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise TimeoutError("no metadata for jobs.retry-1s after 10.0 s")
        return _Future(3)

    outbox._publish(PendingPublish(m.job(TP, 0), "retry", send))
    wait_until(lambda: (outbox.pump(), outbox.pending[0].failures == 1)[1], 10, message="the failure counted")
    assert published == []

    def done() -> bool:
        outbox.pump()
        return published == [0]

    wait_until(done, 10, message="published on the second try")
    assert len(calls) == 2
    outbox.sender.stop()


def test_a_send_that_returns_after_its_partition_moved_finishes_nothing() -> None:
    m, outbox, published = _outbox()
    release = threading.Event()

    def send() -> Any:
        release.wait(10.0)
        return _Future(1)

    outbox._publish(PendingPublish(m.job(TP, 0), "retry", send))
    m.partitions.drop({TP})
    release.set()
    wait_until(lambda: outbox.sender.done.qsize() == 1, 10, message="the send returned")
    outbox.pump()
    assert published == [] and len(outbox) == 0
    outbox.sender.stop()
