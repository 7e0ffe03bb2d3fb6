"""The per-process reply reader: one consumer on one partition of ``<app>.replies``.

Each sending process picks one partition of the shared replies topic, assigns
itself that partition (no consumer group: no rebalance, no commit), and puts
its number in every results task's ``meta["reply"]``; the worker publishes the
result there. One daemon thread per process and app reads it and wakes the
threads waiting in ``get()``. It starts lazily, on the first send of a task
with results, and is forgotten in a forked child (gunicorn, uvicorn workers,
multiprocessing), which starts its own on first use.

Only ids this process sent are kept (a partition may be shared with other
processes when there are more processes than partitions); a result nobody
asked for is dropped, and past :data:`MAX_EXPECTED` ids waited for, the
oldest are forgotten.
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError, KtasksError
from ..kafka import KafkaConsumer, TopicPartition
from ..kafka.errors import KafkaError
from ..readiness import log_failure
from .records import ResultRecord, ensure_result_topics, reader_config, replies_topic

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["ReplyReader", "reader_for"]

_POLL_MS = 200
#: Most task ids one process waits for at once (about 100 bytes each); the oldest are forgotten past it.
MAX_EXPECTED = 100_000


class ReplyReader:
    """Reads this process's reply partition; threads wait on it for their task ids."""

    def __init__(self, app: App) -> None:
        self.app = app
        self._cond = threading.Condition()
        self._wanted: dict[str, float] = {}             # task id -> when it was registered
        self._arrived: dict[str, ResultRecord] = {}
        self._stop = threading.Event()
        ensure_result_topics(app)
        settings = app.settings
        cfg = reader_config(app, f"{app.client_id}-replies-{os.getpid()}", "latest")
        try:
            self._consumer = KafkaConsumer(**cfg)
            topic = replies_topic(app)
            partitions = self._consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + settings.send_timeout_ms / 1000.0
            while not partitions and time.monotonic() < deadline:
                time.sleep(0.1)
                partitions = self._consumer.partitions_for_topic(topic)
            if not partitions:
                raise KtasksError(f"topic {topic!r} does not exist (create it, or enable auto_create_topics)")
            self.partition = random.choice(sorted(partitions))
            tp = TopicPartition(topic, self.partition)
            self._consumer.assign([tp])
            self._consumer.seek_to_end(tp)
            # Resolve the position now: a reply sent after this returns is always read.
            self._consumer.position(tp)
        except KafkaError as exc:
            raise KtasksError(f"cannot read replies from {settings.bootstrap_servers}: {exc}") from exc
        self._thread = threading.Thread(target=self._run, name=f"ktasks-replies-{app.name}", daemon=True)
        self._thread.start()
        logger.debug("reply reader of %s reads %s[%d]", app.name, topic, self.partition)

    def expect(self, task_id: str) -> None:
        """Keep the result of ``task_id`` when it arrives (called before the task is sent)."""
        with self._cond:
            self._wanted[task_id] = time.monotonic()

    def peek(self, task_id: str) -> ResultRecord | None:
        with self._cond:
            return self._arrived.get(task_id)

    def expects(self, task_id: str) -> bool:
        with self._cond:
            return task_id in self._wanted or task_id in self._arrived

    def wait(self, task_id: str, timeout_s: float | None) -> ResultRecord | None:
        """The result of ``task_id``, waiting up to ``timeout_s`` (None: forever); None on timeout."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while task_id not in self._arrived:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(left)
            return self._arrived[task_id]

    def forget(self, task_id: str) -> None:
        with self._cond:
            self._arrived.pop(task_id, None)
            self._wanted.pop(task_id, None)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                batches = self._consumer.poll(timeout_ms=_POLL_MS)
            except Exception as exc:   # noqa: BLE001 - a reader that dies would hang every get() of this process
                log_failure(logger, f"reply reader of {self.app.name}: poll", exc, "going on")
                time.sleep(1.0)
                continue
            arrived = []
            for records in batches.values():
                for record in records:
                    try:
                        arrived.append(ResultRecord.decode(record.value))
                    except DecodeError as exc:
                        logger.warning("reply reader: %s@%d is not a result record (%s): ignored",
                                       record.topic, record.offset, exc)
            if arrived:
                with self._cond:
                    for result in arrived:
                        if result.id in self._wanted:
                            self._arrived[result.id] = result
                    self._cond.notify_all()
            self._prune()
        self._consumer.close()

    def _prune(self) -> None:
        # A task may wait in its topic for hours, so ids are dropped by count, oldest first, not by age.
        with self._cond:
            while len(self._wanted) > MAX_EXPECTED:
                task_id = next(iter(self._wanted))
                self._wanted.pop(task_id, None)
                self._arrived.pop(task_id, None)


_readers: dict[int, ReplyReader] = {}
_lock = threading.Lock()


def reader_for(app: App) -> ReplyReader:
    """This process's reply reader for ``app``, started on first use."""
    reader = _readers.get(id(app))
    if reader is not None and reader.app is app:
        return reader
    with _lock:
        reader = _readers.get(id(app))
        if reader is None or reader.app is not app:     # an id reused by a new App after the old one died
            reader = _readers[id(app)] = ReplyReader(app)
    return reader


def close_reader(app: App) -> None:
    with _lock:
        reader = _readers.pop(id(app), None)
    if reader is not None:
        reader.close()


def _after_fork() -> None:
    # The parent's reader thread does not exist here, and its consumer's sockets belong to the parent:
    # drop it without closing, and let the child start its own on first use.
    global _lock
    _readers.clear()
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork)


def describe(app: App) -> dict[str, Any]:
    reader = _readers.get(id(app))
    return {"partition": None if reader is None else reader.partition}
