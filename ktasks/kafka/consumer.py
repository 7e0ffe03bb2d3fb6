"""Group membership: the consumer's configuration and its rebalance listener.

Kept apart from the worker loop, as kafka-python keeps its coordinator apart
from its fetcher: this layer knows about assignors, sessions, static
membership and rebalance callbacks; the worker only hears "these partitions
are now yours", "give these back" and "these were taken from you".
"""

from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable
from typing import Any

from kafka import AsyncConsumerRebalanceListener, KafkaConsumer, TopicPartition
from kafka.net.selector import KernelEvent

from ..settings import Settings
from .assignor import BalancedAssignor, UpgradeCompatibleCooperativeSticky
from .clients import client_config
from .joinfix import collect_finished_joins

logger = logging.getLogger(__name__)

__all__ = ["build_consumer", "Listener", "assignors"]


def assignors(name: str) -> list[Any]:
    """Assignor instances for a setting value."""
    if name == "balanced":
        # cooperative-sticky second: a rolling upgrade from workers that offer only it keeps
        # one group (the broker picks the first protocol every member supports).
        return [BalancedAssignor(), UpgradeCompatibleCooperativeSticky()]
    if name == "cooperative-sticky":
        from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor

        return [CooperativeStickyAssignor()]
    if name == "sticky":
        from kafka.coordinator.assignors.sticky.sticky_assignor import StickyPartitionAssignor

        return [StickyPartitionAssignor()]
    if name == "roundrobin":
        from kafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor

        return [RoundRobinPartitionAssignor()]
    from kafka.coordinator.assignors.range import RangePartitionAssignor

    return [RangePartitionAssignor()]


#: Longest the broker holds the worker's fetch when there is nothing new (kafka-python's default: 500).
FETCH_MAX_WAIT_MS = 50


def consumer_config(settings: Settings, group_id: str, client_id: str) -> dict[str, Any]:
    """The worker consumer's kafka-python settings; ``kafka_options`` the consumer accepts win."""
    return client_config(settings, "consumer", dict(
        group_id=group_id,
        client_id=f"{client_id}@{socket.gethostname()}:{os.getpid()}",
        # Offsets are committed by hand, per record that finished, never the position.
        enable_auto_commit=False,
        auto_offset_reset=settings.auto_offset_reset,
        session_timeout_ms=settings.session_timeout_ms,
        heartbeat_interval_ms=settings.heartbeat_interval_ms,
        max_poll_interval_ms=settings.max_poll_interval_ms,
        # ETAs and periodic tasks are enqueued in transactions (ktasks.schedule): an aborted
        # one must never run.
        isolation_level="read_committed",
        # A partition resumed (after prefetch_per_partition was reached, or a delay tier's hold)
        # is fetched only once the fetch in flight for the others returns, which the broker holds
        # up to fetch_max_wait_ms when they have nothing new: at kafka-python's 500 ms, the first
        # tasks after a backlog waited up to 400 ms (enqueue-to-start p99 348 ms at 50 tasks/s;
        # 7.6 ms with 50). An idle worker's fetch every 50 ms costs the broker next to nothing.
        fetch_max_wait_ms=FETCH_MAX_WAIT_MS,
        # Take everything the fetcher has buffered on every poll. kafka-python 3.0.12 parks
        # the unreturned rest of a partition's batch when that partition is paused, and
        # never restores it once another partition's batch is drained (the restore checks
        # for None, the drained batch is merely empty): the partition stops for good after
        # its first resume. Memory stays bounded by the fetch sizes and prefetch_per_partition.
        max_poll_records=1_000_000,
        partition_assignment_strategy=assignors(settings.assignor),
        group_instance_id=settings.group_instance_id,
        bootstrap_timeout_ms=max(10000, settings.send_timeout_ms),
    ))


def build_consumer(settings: Settings, group_id: str, client_id: str) -> KafkaConsumer:
    """The worker's group consumer, with the join fix and the balanced assignor bound to it."""
    cfg = consumer_config(settings, group_id, client_id)
    consumer = KafkaConsumer(**cfg)
    # The worker polls with timeout_ms=0 while busy; without this, kafka-python 3.0 drops
    # every group join that completes between two polls and rejoins, a rebalance storm
    # (the cause is explained in joinfix).
    collect_finished_joins(consumer)
    for assignor in cfg["partition_assignment_strategy"]:
        if isinstance(assignor, (BalancedAssignor, UpgradeCompatibleCooperativeSticky)):
            assignor.bind(consumer.assignment)
    return consumer


class Listener(AsyncConsumerRebalanceListener):
    """Forwards rebalance callbacks to the worker.

    kafka-python 3 calls listeners on its IO thread, where a blocking client
    call (a commit) would deadlock and a long callback would stop heartbeats.
    So each callback runs the worker's handler on a helper thread and waits for
    it cooperatively, yielding to the IO loop, which goes on heartbeating and
    serves the handler's commit. The handler may block (drain in-flight tasks,
    commit) for as long as ``revoke_timeout_ms`` allows.
    """

    def __init__(self, on_assigned: Callable[[list[TopicPartition]], None],
                 on_revoked: Callable[[list[TopicPartition]], None],
                 on_lost: Callable[[list[TopicPartition]], None]) -> None:
        self._on_assigned = on_assigned
        self._on_revoked = on_revoked
        self._on_lost = on_lost

    async def on_partitions_assigned(self, assigned: Any) -> None:
        if assigned:
            logger.info("partitions assigned: %s", _fmt(assigned))
        await _off_loop(self._on_assigned, list(assigned))

    async def on_partitions_revoked(self, revoked: Any) -> None:
        if revoked:
            logger.info("partitions revoked: %s", _fmt(revoked))
        await _off_loop(self._on_revoked, list(revoked))

    async def on_partitions_lost(self, lost: Any) -> None:
        if lost:
            logger.warning("partitions lost (no commit possible): %s", _fmt(lost))
        await _off_loop(self._on_lost, list(lost))


async def _off_loop(fn: Callable[[list[TopicPartition]], None], tps: list[TopicPartition]) -> None:
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            fn(tps)
        except BaseException as exc:  # reported on the IO thread below
            failure.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="ktasks-rebalance", daemon=True).start()
    while not done.is_set():
        # kafka-python's event loop understands this kernel event; awaiting it
        # lets heartbeats and our own commit requests run meanwhile.
        await KernelEvent("_sleep", 0.01)
    if failure:
        logger.error("rebalance handler failed", exc_info=failure[0])


def _fmt(tps: Any) -> str:
    return ", ".join(f"{tp.topic}/{tp.partition}" for tp in sorted(tps)) or "none"
