"""Revoke: ``app.revoke(id)``, ``handle.revoke()`` and ``ktasks revoke ID...``.

A revocation is a record keyed by the task id in the compacted
``<app>.revocations`` topic. Every worker reads that topic from the
beginning on a thread of its own (an unassigned consumer, no group) and keeps
the ids in a set; before taking its first record it waits until it has read
up to the topic's end, so a revocation made before the worker started is
honoured. The intake hook skips a revoked id (ledger state ``revoked``, its
offset committed). Revocations older than ``revoke_retention_s`` are dropped
from the set and deleted by the topic's retention.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..kafka import KafkaConsumer, TopicPartition
from ..kafka.errors import KafkaError
from ..kafka.producer import translate_send_error
from ..message import pack, unpack
from ..middleware import Decision, Intake
from .notrun import NotRunRecorder
from .service import ServiceThread
from .topics import ensure_compacted, revocations_topic

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["revoke", "RevocationReader", "RevokeMiddleware"]

#: Longest a starting worker waits to have read every revocation before it takes records.
CATCH_UP_TIMEOUT_S = 30.0


def ensure_revocations_topic(app: App) -> str:
    topic = revocations_topic(app)
    ensure_compacted(app, topic, 1, retention_ms=app.settings.revoke_retention_s * 1000)
    return topic


def revoke(app: App, task_ids: Iterable[str], *, timeout_s: float | None = None) -> list[str]:
    """Revoke ``task_ids``: none of them that has not started will run. Returns the ids.

    Blocks until the broker stored every revocation (``acks=all``); raises
    :class:`~ktasks.errors.EnqueueError` if it did not. A task already running
    is not interrupted.
    """
    ids = [str(i) for i in task_ids]
    for task_id in ids:
        if not task_id or not task_id.strip():
            raise ConfigurationError("revoke: a task id must be a non-empty string")
    topic = ensure_revocations_topic(app)
    value = pack({"at": time.time(), "by": f"{socket.gethostname()}:{os.getpid()}"})
    futures = [app.send_raw(topic, value, key=task_id.encode()) for task_id in ids]
    wait = app.settings.send_timeout_ms / 1000.0 if timeout_s is None else timeout_s
    for future in futures:
        try:
            future.get(timeout=wait)
        except KafkaError as exc:
            raise translate_send_error(exc, app.settings) from exc
    logger.info("revoked %d task(s): %s", len(ids), ", ".join(ids[:10]) + (" ..." if len(ids) > 10 else ""))
    return ids


class RevocationReader(ServiceThread):
    """Reads ``<app>.revocations`` from the beginning, forever; ``revoked`` is the live set of ids."""

    def __init__(self, app: App, settings: Any) -> None:
        super().__init__("ktasks-revocations")
        self.app = app
        self.settings = settings
        self.topic = revocations_topic(app)
        self.retention_s = float(settings.revoke_retention_s)
        #: task id -> when it was revoked (epoch seconds)
        self.revoked: dict[str, float] = {}
        self.caught_up = threading.Event()
        self._next_prune = 0.0


    def serve(self) -> None:
        cfg = self.settings.kafka_common()
        cfg.update(group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
                   client_id=f"{self.app.client_id}-revocations@{socket.gethostname()}:{os.getpid()}",
                   isolation_level="read_committed")
        consumer = KafkaConsumer(**cfg)
        try:
            partitions = None
            while not partitions and not self._halt.is_set():
                partitions = consumer.partitions_for_topic(self.topic)
                if not partitions:
                    logger.warning("revocations topic %s does not exist yet; waiting for it", self.topic)
                    self._halt.wait(2.0)
            if self._halt.is_set():
                return
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions or ())]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            end = consumer.end_offsets(tps)
            if not any(end.values()):
                self.caught_up.set()      # nothing was ever revoked: no need to wait for a fetch
            while not self._halt.is_set():
                for records in consumer.poll(timeout_ms=500).values():
                    for record in records:
                        self._apply(record)
                if not self.caught_up.is_set() and all(consumer.position(tp) >= end[tp] for tp in tps):
                    logger.info("read %d revocation(s) from %s", len(self.revoked), self.topic)
                    self.caught_up.set()
                self._prune()
        finally:
            consumer.close()

    def _apply(self, record: Any) -> None:
        if record.key is None:
            return
        task_id = record.key.decode(errors="replace")
        if record.value is None:
            self.revoked.pop(task_id, None)
            return
        try:
            at = float(unpack(record.value)["at"])
        except Exception:
            # A revocation we cannot read is still a revocation: its record's time stands in.
            logger.warning("revocation of %s at %s@%d is not readable; using the record's time", task_id,
                           record.topic, record.offset)
            at = record.timestamp / 1000.0
        if time.time() - at <= self.retention_s:
            self.revoked[task_id] = at

    def _prune(self) -> None:
        now = time.time()
        if now < self._next_prune:
            return
        self._next_prune = now + 60.0
        old = [k for k, at in self.revoked.items() if now - at > self.retention_s]
        for k in old:
            self.revoked.pop(k, None)


class RevokeMiddleware(NotRunRecorder):
    """Skips revoked task ids at intake (ledger state ``revoked``); runs the reader in the worker parent."""

    def __init__(self) -> None:
        super().__init__()
        self.reader: RevocationReader | None = None

    def is_revoked(self, task_id: str) -> bool:
        return self.reader is not None and task_id in self.reader.revoked

    def worker_started(self, worker: Any) -> None:
        super().worker_started(worker)
        ensure_revocations_topic(worker.app)
        self.reader = RevocationReader(worker.app, worker.settings)
        self.reader.start()
        if not self.reader.caught_up.wait(CATCH_UP_TIMEOUT_S):
            logger.warning("revocations not read within %.0f s; revocations made before this worker started "
                           "are honoured once read", CATCH_UP_TIMEOUT_S)

    def worker_stopping(self, worker: Any) -> None:
        if self.reader is not None:
            self.reader.stop()

    def worker_stopped(self, worker: Any) -> None:
        if self.reader is not None:
            self.reader.stop()
            self.reader.join(timeout=5.0)
            self.reader = None
        super().worker_stopped(worker)

    def intake(self, record: Intake) -> Decision | None:
        reader = self.reader
        if reader is None:
            return None
        at = reader.revoked.get(record.message.id)
        if at is None:
            return None
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))
        return self.skip(record, "revoked", f"revoked at {stamp}")
