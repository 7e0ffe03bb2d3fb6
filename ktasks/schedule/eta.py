"""ETAs of any length: tasks due later than the largest delay tier wait in ``<app>.scheduled``.

``apply_async(countdown_s=86400)`` (or ``eta=``) beyond the largest delay tier
is written to the compacted ``<app>.scheduled`` topic, keyed by task id, with
the task topic and the caller's key in headers. Its partitions are owned by the
workers through a consumer group of their own (``<app>.scheduler``). An owner
rebuilds the partition's index from the topic on assignment (an in-memory heap
of what is due: nothing is scanned per tick), then keeps it current from the
records that follow. When an entry is due it enqueues the task and writes a
tombstone for the entry in ONE Kafka transaction (a transactional producer per
partition, ``transactional.id`` = ``<app>.scheduled-<partition>``): a new
owner's ``init_transactions`` fences the old one and aborts what it had not
committed, and reads with ``read_committed``, so each ETA is enqueued exactly
once across a crash of its owner. A revoked ETA is dropped with its tombstone.

Short countdowns keep using the delay tiers (docs/scheduling.md).
"""

from __future__ import annotations

import heapq
import logging
import os
import socket
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..headers import H_ORIGIN_TOPIC, value_of
from ..kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from ..middleware import Middleware
from ..readiness import log_failure
from .service import ServiceThread
from .topics import ensure_compacted, scheduled_topic

if TYPE_CHECKING:
    from ..app import App
    from .revoke import RevokeMiddleware

logger = logging.getLogger(__name__)

__all__ = ["H_SCHEDULED_KEY", "SchedulerMiddleware", "EtaScheduler", "ensure_scheduled_topic", "scheduler_group"]

#: The caller's record key of a scheduled task (the scheduled record's own key is the task id).
H_SCHEDULED_KEY = "ktasks-scheduled-key"
_NOT_FORWARDED = frozenset({H_ORIGIN_TOPIC, H_SCHEDULED_KEY})
#: Most due entries enqueued in one transaction.
MAX_BATCH = 500


def ensure_scheduled_topic(app: App) -> str:
    topic = scheduled_topic(app)
    ensure_compacted(app, topic, app.settings.scheduled_partitions)
    return topic


def scheduler_group(app: App) -> str:
    """One group per app, whatever the workers' groups: two groups would enqueue every ETA twice."""
    return f"{app.name}.scheduler"


@dataclass
class _Entry:
    due: float
    topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]


@dataclass
class _Owned:
    """A partition of the scheduled topic this process owns."""

    tp: TopicPartition
    producer: KafkaProducer | None = None
    end: int | None = None             # the offset to read up to before firing (restore)
    entries: dict[str, _Entry] = field(default_factory=dict)
    heap: list[tuple[float, str]] = field(default_factory=list)

    @property
    def restored(self) -> bool:
        return self.end is None


class _Listener(ConsumerRebalanceListener):
    def __init__(self, scheduler: EtaScheduler) -> None:
        self.s = scheduler

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        self.s.changes.append(("revoked", list(revoked)))

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.s.changes.append(("assigned", list(assigned)))


class EtaScheduler(ServiceThread):
    """The owner side: a consumer in ``<app>.scheduler`` and a transactional producer per owned partition."""

    def __init__(self, app: App, settings: Any, revocations: RevokeMiddleware | None = None) -> None:
        super().__init__("ktasks-eta-scheduler")
        self.app = app
        self.settings = settings
        self.topic = scheduled_topic(app)
        self.revocations = revocations
        self.owned: dict[TopicPartition, _Owned] = {}
        self.changes: list[tuple[str, list[TopicPartition]]] = []
        self.fired = 0
        self._tick_s = settings.beat_interval_ms / 1000.0

    def reset(self) -> None:
        self._release(list(self.owned))

    def _consumer(self) -> KafkaConsumer:
        cfg = self.settings.kafka_common()
        cfg.update(group_id=scheduler_group(self.app), enable_auto_commit=False, auto_offset_reset="earliest",
                   isolation_level="read_committed", session_timeout_ms=self.settings.session_timeout_ms,
                   heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                   client_id=f"{self.app.client_id}-scheduler@{socket.gethostname()}:{os.getpid()}")
        return KafkaConsumer(**cfg)

    def serve(self) -> None:
        consumer = self._consumer()
        # Each owned partition fires in a transaction of its own (its producer's
        # transactional.id fences that partition's previous owner); committed one after
        # the other they made a due entry wait for the others' commits, 0.1 to 0.3 s each.
        firing = ThreadPoolExecutor(max_workers=max(1, self.settings.scheduled_partitions),
                                    thread_name_prefix="ktasks-eta-fire")
        try:
            consumer.subscribe([self.topic], listener=_Listener(self))
            # Load the topic's metadata before the first poll joins the group (see
            # Worker._await_metadata: otherwise the first assignment can come out empty).
            consumer.partitions_for_topic(self.topic)
            while not self._halt.is_set():
                records = consumer.poll(timeout_ms=int(self._wait_s() * 1000))
                self._apply_changes(consumer)
                for tp, recs in records.items():
                    owned = self.owned.get(tp)
                    if owned is not None:
                        for record in recs:
                            self._read(owned, record)
                for owned in list(self.owned.values()):
                    if not owned.restored and consumer.position(owned.tp) >= (owned.end or 0):
                        owned.end = None
                        logger.info("scheduled %s/%d restored: %d ETA(s) pending", owned.tp.topic,
                                    owned.tp.partition, len(owned.entries))
                now = time.time()
                due = [o for o in self.owned.values() if o.restored and o.heap and o.heap[0][0] <= now]
                if len(due) == 1:
                    self.fired += self._fire_due(due[0])
                elif due:
                    self.fired += sum(firing.map(self._fire_due, due))
        finally:
            firing.shutdown(wait=True)
            self._release(list(self.owned))
            consumer.close()

    def _wait_s(self) -> float:
        soonest = min((o.heap[0][0] for o in self.owned.values() if o.heap and o.restored), default=None)
        if soonest is None:
            return self._tick_s
        return max(0.0, min(self._tick_s, soonest - time.time()))

    def _apply_changes(self, consumer: KafkaConsumer) -> None:
        while self.changes:
            kind, tps = self.changes.pop(0)
            if kind == "revoked":
                self._release(tps)
                continue
            for tp in tps:
                if self.stopping:
                    break       # assigned as the worker stops (a short --burst run): nothing to take on
                self._take(consumer, tp)

    def _take(self, consumer: KafkaConsumer, tp: TopicPartition) -> None:
        cfg = self.app.producer.config()
        cfg.update(transactional_id=f"{self.app.name}.scheduled-{tp.partition}",
                   client_id=f"{self.app.client_id}-scheduler-{tp.partition}")
        producer = KafkaProducer(**cfg)
        # Fences a previous owner and aborts the transaction it left open, so reading up to
        # the (read_committed) end below sees every tombstone that will ever count.
        producer.init_transactions()
        owned = _Owned(tp, producer)
        consumer.seek_to_beginning(tp)
        owned.end = consumer.end_offsets([tp])[tp]
        self.owned[tp] = owned
        logger.info("scheduled %s/%d assigned: restoring up to offset %d", tp.topic, tp.partition, owned.end)

    def _release(self, tps: list[TopicPartition]) -> None:
        for tp in tps:
            owned = self.owned.pop(tp, None)
            if owned is not None and owned.producer is not None:
                try:
                    owned.producer.close(timeout=2)
                except Exception:
                    logger.debug("closing the scheduler's producer of %s failed", tp, exc_info=True)

    def _read(self, owned: _Owned, record: Any) -> None:
        if record.key is None:
            return
        task_id = record.key.decode(errors="replace")
        if record.value is None:
            owned.entries.pop(task_id, None)
            return
        headers = list(record.headers or [])
        origin = value_of(headers, H_ORIGIN_TOPIC)
        if not origin:
            logger.error("scheduled record %s@%d (%s) names no task topic: ignored", record.topic, record.offset,
                         task_id)
            return
        from ..errors import DecodeError
        from ..message import decode

        try:
            due = decode(record.value).due or 0.0
        except DecodeError as exc:
            logger.error("scheduled record %s@%d (%s) is undecodable, sent on at once: %s", record.topic,
                         record.offset, task_id, exc)
            due = 0.0
        # Raw bytes: a caller's key need not be UTF-8.
        key = next((v for k, v in reversed(headers) if k == H_SCHEDULED_KEY), None)
        entry = _Entry(due, origin, key, record.value,
                       [(k, v) for k, v in headers if k not in _NOT_FORWARDED])
        owned.entries[task_id] = entry
        heapq.heappush(owned.heap, (due, task_id))

    def _fire_due(self, owned: _Owned) -> int:
        """Enqueue what is due in ``owned`` and tombstone it, in one transaction; returns how many."""
        now = time.time()
        batch: list[tuple[str, _Entry]] = []
        while owned.heap and owned.heap[0][0] <= now and len(batch) < MAX_BATCH:
            due, task_id = heapq.heappop(owned.heap)
            entry = owned.entries.get(task_id)
            if entry is None or entry.due != due:
                continue        # fired, revoked, or replaced by a later send of the same id
            batch.append((task_id, entry))
        if not batch:
            return 0
        producer = owned.producer
        assert producer is not None
        producer.begin_transaction()
        try:
            for task_id, entry in batch:
                if self.revocations is not None and self.revocations.is_revoked(task_id):
                    logger.info("scheduled task %s was revoked: dropped", task_id)
                else:
                    producer.send(entry.topic, value=entry.value, key=entry.key, headers=entry.headers)
                producer.send(self.topic, value=None, key=task_id.encode(), partition=owned.tp.partition)
            producer.commit_transaction()
        except Exception as exc:
            # Nothing of it counts (read_committed): give the partition up; its next owner
            # restores it from the topic and enqueues these again.
            log_failure(logger, f"enqueueing {len(batch)} due ETA(s) of {owned.tp.topic}/{owned.tp.partition}", exc,
                        "releasing the partition")
            raise
        for task_id, _ in batch:
            owned.entries.pop(task_id, None)
        logger.debug("enqueued %d due ETA(s) from %s/%d", len(batch), owned.tp.topic, owned.tp.partition)
        return len(batch)


class SchedulerMiddleware(Middleware):
    """Runs the ETA scheduler in every worker parent (idle when it owns no partition)."""

    def __init__(self) -> None:
        self.scheduler: EtaScheduler | None = None

    def worker_started(self, worker: Any) -> None:
        from .revoke import RevokeMiddleware

        revocations = next((m for m in worker.app.middleware if isinstance(m, RevokeMiddleware)), None)
        ensure_scheduled_topic(worker.app)
        self.scheduler = EtaScheduler(worker.app, worker.settings, revocations)
        self.scheduler.start()

    def worker_stopping(self, worker: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()

    def worker_stopped(self, worker: Any) -> None:
        if self.scheduler is not None:
            self.scheduler.stop()
            self.scheduler.join(timeout=10.0)
            self.scheduler = None
