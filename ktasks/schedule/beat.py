"""Periodic tasks without a single point of failure: ``ktasks worker --beat`` on any number of workers.

The entries are declared in code (:mod:`.periodic`). Their state lives in the
compacted one-partition topic ``<app>.beat``: the last fired slot of each
entry (keyed by its name) and the current owner. Every beat runner joins the
consumer group ``<app>.beat``; the one assigned the partition is the owner:

1. it opens the transactional producer ``<app>.beat``: ``init_transactions``
   fences the previous owner (a zombie's next commit fails) and aborts what it
   left open;
2. reads the topic from the start up to its end with ``read_committed``: the
   last fire of every entry, as committed;
3. fires each entry when its slot comes: the task record and the entry's new
   last fire are written in ONE Kafka transaction, so a fire and its record
   are both visible or neither is. A failover never fires a slot twice; slots
   that passed while no runner owned the partition fire once on recovery
   (the latest of them) if the entry has ``catch_up=True``, else not at all.

Each fire's task id is ``beat-<name>-<slot ms>``: the same for any owner.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import TYPE_CHECKING, Any

from ..kafka import ConsumerRebalanceListener, KafkaConsumer, KafkaProducer, TopicPartition
from ..message import pack, unpack
from ..middleware import Middleware
from ..readiness import log_failure
from .periodic import PeriodicEntry, slot_task_id
from .service import ServiceThread
from .topics import beat_topic, ensure_compacted

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["BeatRunner", "BeatMiddleware", "read_beat_state", "starting_slot", "OWNER_KEY"]

#: Key of the owner record in the beat topic (entry names never start with NUL).
OWNER_KEY = b"\x00owner"


def ensure_beat_topic(app: App) -> str:
    topic = beat_topic(app)
    ensure_compacted(app, topic, 1)
    return topic


def _apply(record: Any, last: dict[str, float], owner: dict[str, Any],
           resume: dict[str, float] | None = None) -> None:
    if record.key is None or record.value is None:
        return
    try:
        value = unpack(record.value)
    except Exception:
        logger.warning("beat record %s@%d is not readable: ignored", record.topic, record.offset)
        return
    if record.key == OWNER_KEY:
        owner.clear()
        owner.update(value)
        return
    name = record.key.decode(errors="replace")
    slot = float(value.get("last", 0.0))
    last[name] = max(slot, last.get(name, 0.0))
    if resume is not None:
        # A handover record names the slot the previous owner would have fired next.
        if value.get("resume") is not None:
            resume[name] = float(value["resume"])
        else:
            resume.pop(name, None)


def read_beat_state(app: App, timeout_s: float = 30.0) -> tuple[dict[str, float], dict[str, Any]]:
    """``(last fire of each entry, owner record)`` as committed in ``<app>.beat`` now."""
    cfg = app.settings.kafka_common()
    cfg.update(group_id=None, enable_auto_commit=False, isolation_level="read_committed",
               client_id=f"{app.client_id}-beat-list")
    consumer = KafkaConsumer(**cfg)
    last: dict[str, float] = {}
    owner: dict[str, Any] = {}
    try:
        topic = beat_topic(app)
        if not consumer.partitions_for_topic(topic):
            return last, owner
        tp = TopicPartition(topic, 0)
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        deadline = time.monotonic() + timeout_s
        while consumer.position(tp) < end and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=500).values():
                for record in records:
                    _apply(record, last, owner)
    finally:
        consumer.close()
    return last, owner


def starting_slot(entry: PeriodicEntry, name: str, now: float, last: float | None,
                  resumes: tuple[float | None, ...], grace_s: float) -> float:
    """The slot a new owner fires ``entry`` at first.

    ``last`` is the entry's last fire as the topic has it; ``resumes`` are the
    next slots some owner stood at when it lost the partition: ours from an
    earlier ownership, and the previous owner's handover record. The newest of
    them wins: ours may be long stale (we owned the partition once while the
    group settled), and a stale one must not hide the handover record, or the
    slot that came due during the handover would count as missed. A handover
    resumes where the last owner stood, unless no owner ran for longer than
    ``grace_s`` since: then the slots are missed ones, and ``catch_up`` decides.
    """
    known = [r for r in resumes if r is not None]
    resume = max(known) if known else None
    if resume is not None and (last is None or resume > last) and resume > now - grace_s:
        return resume
    if last is None:
        return entry.next_after(now)
    missed = entry.latest_at_or_before(now, last)
    if missed is None:
        return entry.next_after(last)
    if entry.catch_up:
        logger.info("beat: %s missed its slot %s: firing it once (catch_up)", name, _clock(missed))
        return missed
    logger.info("beat: %s missed slot(s) up to %s: not fired (catch_up is off)", name, _clock(missed))
    return entry.next_after(now)


class _Listener(ConsumerRebalanceListener):
    def __init__(self, runner: BeatRunner) -> None:
        self.r = runner

    def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        if revoked:
            # Before the rebalance completes: nobody else can own the partition yet.
            self.r.hand_over()
            self.r.changes.append("revoked")

    def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        if assigned:
            self.r.changes.append("assigned")


class BeatRunner(ServiceThread):
    """Competes for ``<app>.beat``; while it owns it, fires the app's periodic entries."""

    def __init__(self, app: App, settings: Any | None = None) -> None:
        super().__init__("ktasks-beat")
        self.app = app
        self.settings = settings or app.settings
        self.topic = beat_topic(app)
        self.changes: list[str] = []
        self.last: dict[str, float] = {}
        self.next: dict[str, float] = {}
        # Our schedule when a rebalance took the partition away: if it comes back to us (a
        # member joining or leaving the group moves it out and back), the slots that came due
        # meanwhile are fired late, not counted as missed; the topic still says if anyone did.
        self._paused_next: dict[str, float] = {}
        #: The previous owner's next slots as it handed over (read from the topic).
        self.resume: dict[str, float] = {}
        self.producer: KafkaProducer | None = None
        self.restore_end: int | None = None
        self.owner = False
        self.fired = 0
        self._tick_s = self.settings.beat_interval_ms / 1000.0
        self._handover_grace_s = max(30.0, 2 * self.settings.session_timeout_ms / 1000.0)
        self._me = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def entries(self) -> dict[str, PeriodicEntry]:
        return self.app.periodic_tasks

    def reset(self) -> None:
        self._release()
        self._paused_next = {}

    def serve(self) -> None:
        ensure_beat_topic(self.app)
        cfg = self.settings.kafka_common()
        cfg.update(group_id=f"{self.app.name}.beat", enable_auto_commit=False, auto_offset_reset="earliest",
                   isolation_level="read_committed", session_timeout_ms=self.settings.session_timeout_ms,
                   heartbeat_interval_ms=self.settings.heartbeat_interval_ms,
                   client_id=f"{self.app.client_id}-beat@{self._me}")
        consumer = KafkaConsumer(**cfg)
        logger.info("beat: %d periodic task(s); competing for %s", len(self.entries), self.topic)
        try:
            consumer.subscribe([self.topic], listener=_Listener(self))
            consumer.partitions_for_topic(self.topic)      # see Worker._await_metadata
            while not self._halt.is_set():
                records = consumer.poll(timeout_ms=int(self._tick_s * 1000))
                while self.changes:
                    if self.changes.pop(0) == "assigned":
                        self._take(consumer)
                    else:
                        self._release()
                for recs in records.values():
                    for record in recs:
                        _apply(record, self.last, {}, self.resume)
                tp = TopicPartition(self.topic, 0)
                if self.restore_end is not None and consumer.position(tp) >= self.restore_end:
                    self.restore_end = None
                    self._restored()
                if self.owner:
                    self._fire_due()
        finally:
            self.hand_over()          # a clean stop: the next owner resumes where we were
            self._release()
            consumer.close()

    def _take(self, consumer: KafkaConsumer) -> None:
        cfg = self.app.producer.config()
        cfg.update(transactional_id=f"{self.app.name}.beat", client_id=f"{self.app.client_id}-beat")
        self.producer = KafkaProducer(**cfg)
        self.producer.init_transactions()     # fences the previous owner, aborts what it left open
        tp = TopicPartition(self.topic, 0)
        consumer.seek_to_beginning(tp)
        self.last = {}
        self.resume = {}
        self.restore_end = consumer.end_offsets([tp])[tp]
        logger.info("beat: %s assigned to this process; reading the last fires", self.topic)

    def _restored(self) -> None:
        now = time.time()
        paused, self._paused_next = self._paused_next, {}
        for name, entry in self.entries.items():
            self.next[name] = starting_slot(entry, name, now, self.last.get(name),
                                            (paused.get(name), self.resume.get(name)), self._handover_grace_s)
        assert self.producer is not None
        self.producer.begin_transaction()
        self.producer.send(self.topic, key=OWNER_KEY, value=pack({"owner": self._me, "since": now}))
        self.producer.commit_transaction()
        self.owner = True
        logger.info("beat: owner of %s (%s): %d periodic task(s)", self.topic, self._me, len(self.entries))

    def hand_over(self) -> None:
        """Revoked, still the owner until the rebalance completes: record where each entry stands.

        The next owner resumes from these slots, so a clean handover (a worker
        stopping or joining) neither skips a slot nor fires one twice. Written
        in a transaction with our producer: if it is fenced already, nothing is
        written and the next owner follows ``catch_up``.
        """
        if not self.owner or self.producer is None:
            return
        try:
            self.producer.begin_transaction()
            for name, nxt in self.next.items():
                self.producer.send(self.topic, key=name.encode(), value=pack(
                    {"last": self.last.get(name, 0.0), "resume": nxt, "at": time.time(), "by": self._me}))
            self.producer.commit_transaction()
            logger.info("beat: handing %s over: next slots recorded", self.topic)
        except Exception:
            logger.warning("beat: could not record the next slots when handing over", exc_info=True)

    def _release(self) -> None:
        if self.owner or self.producer is not None:
            logger.info("beat: no longer the owner of %s", self.topic)
        if self.owner:
            self._paused_next = dict(self.next)
        self.owner = False
        self.restore_end = None
        self.next.clear()
        if self.producer is not None:
            try:
                self.producer.close(timeout=2)
            except Exception:
                logger.debug("closing the beat producer failed", exc_info=True)
            self.producer = None

    def _fire_due(self) -> None:
        now = time.time()
        due = [(name, slot) for name, slot in self.next.items() if slot <= now and name in self.entries]
        if not due:
            return
        records = []
        for name, slot in due:
            entry = self.entries[name]
            record = self.app.build_record(entry.task, entry.args, entry.kwargs, task_id=slot_task_id(name, slot),
                                           topic=entry.topic)
            self.app.ensure_topics([record.topic], partitions=record.partitions)
            records.append((name, slot, record))
        producer = self.producer
        assert producer is not None
        producer.begin_transaction()
        try:
            for name, slot, record in records:
                producer.send(record.topic, value=record.value, key=record.key, headers=record.headers)
                producer.send(self.topic, key=name.encode(),
                              value=pack({"last": slot, "at": now, "by": self._me}))
            producer.commit_transaction()
        except Exception as exc:
            # Not fired (read_committed hides it all): give up ownership; the next owner decides.
            log_failure(logger, f"beat: firing {', '.join(n for n, _, _ in records)}", exc, f"releasing {self.topic}")
            raise
        for name, slot, record in records:
            entry = self.entries[name]
            self.last[name] = slot
            nxt = entry.next_after(slot)
            # Behind by less than the grace (resumed after a handover, a slow cycle): the next
            # slots fire late, in order. Further behind: missed, and catch_up decides.
            if nxt <= now - self._handover_grace_s:
                missed = entry.latest_at_or_before(now, slot)
                nxt = missed if entry.catch_up and missed is not None else entry.next_after(now)
            self.next[name] = nxt
            logger.info("beat: fired %s (slot %s) as %s[%s]", name, _clock(slot), entry.task, record.message.id)
        self.fired += len(records)


def _clock(epoch_s: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(epoch_s)) + f".{int(epoch_s * 1000) % 1000:03d}Z"


class BeatMiddleware(Middleware):
    """``ktasks worker --beat``: runs a :class:`BeatRunner` in the worker parent."""

    def __init__(self) -> None:
        self.runner: BeatRunner | None = None

    def worker_started(self, worker: Any) -> None:
        self.runner = BeatRunner(worker.app, worker.settings)
        self.runner.start()

    def worker_stopping(self, worker: Any) -> None:
        if self.runner is not None:
            self.runner.stop()

    def worker_stopped(self, worker: Any) -> None:
        if self.runner is not None:
            self.runner.stop()
            self.runner.join(timeout=10.0)
            self.runner = None
