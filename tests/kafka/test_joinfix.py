"""A member joining a busy one: the consumer layer's join fix, with two consumers and no worker.

The busy member polls with ``timeout_ms=0``, as the worker does while tasks
run. Before the fix in ``ktasks.kafka.joinfix``, kafka-python 3.0 dropped
every join that finished between two polls and rejoined: generation after
generation ("rebalance storm") until a poll happened to be waiting when the
SyncGroup answer came.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from ktasks.kafka.consumer import build_consumer
from ktasks.settings import Settings
from tests.helpers import create_topic, wait_until


@pytest.mark.parametrize("assignor", ["balanced", "cooperative-sticky", "range"])
def test_member_joining_a_busy_member_settles_in_one_rebalance(assignor: str, kafka_bootstrap: str,
                                                              kafka_admin: Any, unique: Any) -> None:
    topic, group = unique("tasks"), unique("group")
    create_topic(kafka_admin, topic, partitions=2)
    settings = Settings(bootstrap_servers=kafka_bootstrap, assignor=assignor, session_timeout_ms=6000,
                        heartbeat_interval_ms=500)
    a = build_consumer(settings, group, "a")
    b = build_consumer(settings, group, "b")
    stop = threading.Event()
    b_thread = threading.Thread(target=lambda: [b.poll(timeout_ms=100) for _ in iter(stop.is_set, True)],
                                name="member-b")
    try:
        a.subscribe([topic])
        a.partitions_for_topic(topic)    # as a worker does first: see Worker._await_metadata
        wait_until(lambda: a.poll(timeout_ms=100) is not None and len(a.assignment()) == 2, 30,
                   message="a owns both partitions")
        first_generation = a.group_metadata().generation_id
        b.subscribe([topic])
        b.partitions_for_topic(topic)
        b_thread.start()
        rejected = 0
        last_commit = 0.0

        def busy_a_settled() -> bool:
            nonlocal rejected, last_commit
            # Busy: never wait in poll, as the worker does while tasks run; commit as it goes.
            a.poll(timeout_ms=0)
            task = a._coordinator._join_task
            if task is not None:
                # The busy member's common case made certain: its join round trip finishes
                # (on the client's IO thread) before its next poll.
                wait_until(lambda: task.is_done or a._coordinator._join_task is not task, 30,
                           message="a's join round trip finished")
            now = time.monotonic()
            if a.assignment() and now - last_commit > 0.1:
                last_commit = now
                try:
                    a.commit({tp: OffsetAndMetadata(0, "", -1) for tp in a.assignment()})
                except KafkaError:
                    rejected += 1
            return len(a.assignment()) == 1 and len(b.assignment()) == 1

        wait_until(busy_a_settled, 60, interval_s=0.005, message="a and b own one partition each")
        joins = a.group_metadata().generation_id - first_generation
        # B's join is one rebalance; the cooperative protocol completes a move in a second
        # round. Before the fix a busy A dropped every finished round trip and rejoined, never
        # settling here (in real runs, until a poll happened to catch a SyncGroup answer).
        assert joins <= (1 if assignor == "range" else 2), f"{joins} rebalances; {rejected} commits rejected"
        assert a.assignment() | b.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
    finally:
        stop.set()
        if b_thread.is_alive():
            b_thread.join(timeout=10)
        a.close()
        b.close()


@pytest.mark.parametrize("assignor", ["balanced", "range"])
def test_a_busy_member_gets_the_partitions_of_a_topic_created_after_it_subscribed(
        assignor: str, kafka_bootstrap: str, kafka_admin: Any, unique: Any) -> None:
    """The rejoin a new topic starts is applied even when no poll waits for its SyncGroup answer.

    kafka-python dropped it: the leader's own assignment made the metadata
    snapshot current again, so the next poll saw no need to rejoin and never
    collected the round trip; the member kept its empty assignment for good.
    """
    topic, group = unique("late"), unique("group")
    settings = Settings(bootstrap_servers=kafka_bootstrap, assignor=assignor, session_timeout_ms=6000,
                        heartbeat_interval_ms=500)
    consumer = build_consumer(settings, group, "late")
    try:
        consumer.subscribe([topic])
        # Joined, with nothing to own yet: the topic does not exist.
        wait_until(lambda: consumer.poll(timeout_ms=100) is not None
                   and consumer.group_metadata().generation_id >= 1, 30, message="joined the group")
        assert consumer.assignment() == set()
        create_topic(kafka_admin, topic, partitions=2)
        # Busy from here on: polls never wait, as the worker's do while tasks run.
        wait_until(lambda: consumer.poll(timeout_ms=0) is not None and len(consumer.assignment()) == 2, 45,
                   interval_s=0.01, message="both partitions of the new topic assigned")
    finally:
        consumer.close()
