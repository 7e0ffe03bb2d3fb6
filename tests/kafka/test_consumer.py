"""The consumer's group membership against the broker: assignors offered and a rolling upgrade."""

from __future__ import annotations

from typing import Any

from kafka import KafkaConsumer
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

from ktasks.kafka.consumer import FETCH_MAX_WAIT_MS, assignors, build_consumer, consumer_config
from ktasks.settings import Settings
from tests.helpers import create_topic, wait_until


def test_balanced_is_offered_first_then_cooperative_sticky() -> None:
    assert [a.name for a in assignors("balanced")] == ["ktasks-balanced", "cooperative-sticky"]


def test_the_worker_consumer_fetch_wait_is_short_and_the_users_option_wins() -> None:
    # kafka-python's 500 ms made a partition resumed after a backlog wait for the fetch in flight
    # for the others (docs/performance.md, "Producer linger and fetch wait"): the first tasks after
    # a backlog started up to 400 ms late. Timings are the benchmark's; here, the setting.
    assert consumer_config(Settings(), "g", "c")["fetch_max_wait_ms"] == FETCH_MAX_WAIT_MS == 50
    user = Settings(kafka_options={"fetch_max_wait_ms": 250})
    assert consumer_config(user, "g", "c")["fetch_max_wait_ms"] == 250


def test_new_worker_joins_a_group_of_older_cooperative_sticky_workers(kafka_bootstrap: str, kafka_admin: Any,
                                                                    unique: Any) -> None:
    topic, group = unique("tasks"), unique("group")
    create_topic(kafka_admin, topic, partitions=2)
    # A worker from before 'balanced' became the default offers only cooperative-sticky.
    old = KafkaConsumer(bootstrap_servers=kafka_bootstrap, group_id=group, enable_auto_commit=False,
                        session_timeout_ms=6000, heartbeat_interval_ms=500,
                        partition_assignment_strategy=[CooperativeStickyAssignor()])
    new = build_consumer(Settings(bootstrap_servers=kafka_bootstrap, session_timeout_ms=6000,
                                  heartbeat_interval_ms=500), group, "new")
    try:
        old.subscribe([topic])
        new.subscribe([topic])
        # As every worker does before its first poll (Worker._await_metadata): kafka-python can
        # lose the metadata update subscribe() asks for, and a leader without the topic's
        # metadata assigns none of it until the next refresh, 5 minutes later (failed in CI).
        old.partitions_for_topic(topic)
        new.partitions_for_topic(topic)

        def both_own_one() -> bool:
            old.poll(timeout_ms=50)
            new.poll(timeout_ms=50)
            return len(old.assignment()) == 1 and len(new.assignment()) == 1

        wait_until(both_own_one, 60, interval_s=0, message="old and new worker own one partition each")
        described = kafka_admin.describe_groups([group])[group]
        assert described.get("protocol_data") == "cooperative-sticky", described
    finally:
        old.close()
        new.close()
