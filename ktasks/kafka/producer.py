"""One Kafka producer per process: lazy, thread-safe and fork-safe.

Web servers fork (gunicorn, uwsgi) and so does :mod:`multiprocessing`. A
producer's sockets and IO thread must never be shared across a fork, so the
producer remembers the pid that built it; a forked child finds a different pid,
keeps its inherited copy untouched (never flushed, closed or garbage-collected
there), and builds its own. Locks are replaced in the child right after the
fork, so a lock another parent thread held at fork time cannot deadlock it.

The producer is flushed at interpreter exit, on ``app.close()``, and at the
exit of :mod:`multiprocessing` children (which leave through ``os._exit`` and
skip :mod:`atexit`). A child made with a bare ``os.fork()`` that leaves through
``os._exit`` must call ``app.flush()`` first.

At interpreter exit the flush waits up to ``send_timeout_ms``; every record
still not acknowledged then is written to stderr with its task id (directly,
whatever the logging setup), since its sender can no longer learn of it. The
exit status is left as the program set it: an :mod:`atexit` hook can change it
only through ``os._exit``, which would skip the other exit hooks.

Every producer gets the workaround for kafka-python's lost producer id, and a
watchdog replaces a producer that stopped making progress (see
:mod:`ktasks.kafka.producer_recovery`).
"""

from __future__ import annotations

import atexit
import collections
import logging
import os
import sys
import threading
import time
import weakref
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from ..errors import BrokerUnavailable, EnqueueError
from ..headers import H_ID, value_of
from ..settings import Settings
from .clients import client_config, connecting
from .producer_recovery import abort_pending, has_fatal_error, install_producer_id_recovery, unusable_reason

logger = logging.getLogger(__name__)

__all__ = ["ProducerHolder", "translate_send_error"]

_holders: weakref.WeakSet[ProducerHolder] = weakref.WeakSet()
# Producers inherited across a fork: kept referenced so that the child never
# runs their finalizers (flush, close) against the parent's sockets.
_inherited: list[Any] = []
# Pid of the process that registered a multiprocessing exit finalizer.
_mp_finalizer_pid: int | None = None
# How often the watchdog looks for a stuck producer, and the margin past
# delivery_timeout_ms after which a record not yet completed means "stuck".
_WATCHDOG_INTERVAL_S = 1.0
_STALL_MARGIN_S = 5.0


class _Pending:
    """Records sent and not yet completed, so that an exit can name the unsent ones.

    Per ``delay()`` this costs an append and one errback: acknowledged records
    are dropped from the front of the queue every :data:`_PURGE_EVERY` sends
    (records are acknowledged about in order), not one by one under a lock.
    """

    def __init__(self) -> None:
        self._records: collections.deque[tuple[Any, str, str]] = collections.deque()
        self._sent = 0

    def track(self, future: Any, task_id: str, topic: str) -> None:
        records = self._records
        records.append((future, task_id, topic))
        future.add_errback(self._failed, task_id, topic)
        self._sent += 1
        if self._sent % _PURGE_EVERY == 0:
            while records and records[0][0].is_done:
                records.popleft()

    @staticmethod
    def _failed(task_id: str, topic: str, exc: BaseException) -> None:
        logger.warning("%s was not sent to %s: %s: %s", _named(task_id), topic, type(exc).__name__, exc)

    def snapshot(self) -> list[tuple[Any, str, str]]:
        """The records not yet acknowledged (or failed)."""
        return [r for r in list(self._records) if not r[0].is_done]

    def reset(self) -> None:
        self._records = collections.deque()


_PURGE_EVERY = 256


class ProducerHolder:
    """Builds the producer on first use in each process and closes it at exit."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._pid = os.getpid()
        self._pending = _Pending()
        _holders.add(self)

    def config(self) -> dict[str, Any]:
        s = self._settings
        return client_config(s, "producer", dict(
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=s.linger_ms,
            max_block_ms=s.send_timeout_ms,
            bootstrap_timeout_ms=s.send_timeout_ms,
            # Idempotence needs delivery_timeout >= linger + request timeout.
            request_timeout_ms=min(30000, max(1000, s.send_timeout_ms // 2)),
            delivery_timeout_ms=max(s.send_timeout_ms, s.linger_ms + min(30000, max(1000, s.send_timeout_ms // 2))),
            max_request_size=max(s.max_message_bytes + 1024, 1048576),
            compression_type=s.compression_type,
        ))  # options the user passed explicitly in kafka_options win over these

    def get(self) -> KafkaProducer:
        """The producer of this process, built on first call."""
        pid = os.getpid()
        producer = self._producer
        if producer is not None and self._pid == pid:
            if not has_fatal_error(producer):
                return producer
            self._replace_if_unusable()
        with self._lock:
            if self._pid != pid:  # forked without the at-fork hook (should not happen)
                self._after_fork()
            if self._producer is None:
                try:
                    with connecting(self._settings):
                        producer = KafkaProducer(**self.config())
                except KafkaError as exc:
                    raise EnqueueError(f"cannot create Kafka producer: {exc}") from exc
                # Our exit hook flushes with a longer timeout than kafka-python's own.
                _forget_kafka_atexit(producer)
                _register_multiprocessing_exit()
                install_producer_id_recovery(producer)
                _start_watchdog()
                self._producer = producer
            return self._producer

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None,
             task_id: str | None = None) -> Any:
        """Send one record; returns kafka-python's future. Raises kafka-python's errors.

        The record is tracked (by ``task_id``, else the task id in its
        ``ktasks-id`` header) until it is acknowledged or fails, so an exit can
        report it if it is not.
        """
        headers = headers or []
        future = self.get().send(topic, value=value, key=key, headers=headers, partition=partition)
        self._pending.track(future, task_id or value_of(headers, H_ID) or "", topic)
        return future

    def _replace_if_unusable(self) -> None:
        """Fail and replace this process's producer if kafka-python left it unusable (watchdog step)."""
        producer = self._producer
        if producer is None or self._pid != os.getpid():
            return
        limit_s = self.config()["delivery_timeout_ms"] / 1000.0 + _STALL_MARGIN_S
        reason = unusable_reason(producer, limit_s)
        if reason is None:
            return
        with self._lock:
            if self._producer is not producer:
                return
            self._producer = None
        logger.error("replacing the Kafka producer: %s; failing its %d pending records", reason,
                     len(self._pending.snapshot()))
        abort_pending(producer)

    def _after_fork(self) -> None:
        """In a forked child: set the parent's producer aside untouched, start afresh."""
        pid = os.getpid()
        if self._pid == pid:
            return
        inherited, self._producer = self._producer, None
        if inherited is not None:
            logger.debug("process %d forked from %d: the parent's producer is left alone", pid, self._pid)
            _forget_kafka_atexit(inherited)
            try:
                inherited._closed = True  # its close()/__del__ become no-ops in this process
            except Exception:  # pragma: no cover - defensive: private attribute
                pass
            _inherited.append(inherited)
        self._pid = pid
        self._lock = threading.Lock()
        self._pending.reset()

    @property
    def started(self) -> bool:
        return self._producer is not None and self._pid == os.getpid()

    def flush(self, timeout_s: float | None = None) -> None:
        if self.started:
            assert self._producer is not None
            self._producer.flush(timeout=timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush and close this process's producer (a no-op if none was built here)."""
        self._after_fork()
        with self._lock:
            producer, self._producer = self._producer, None
            if producer is not None:
                try:
                    producer.flush(timeout=timeout_s)
                finally:
                    producer.close(timeout=timeout_s)

    def close_at_exit(self) -> None:
        """Flush for up to ``send_timeout_ms``, close, and write every unsent record's task id to stderr."""
        self._after_fork()
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is None:
            return
        pending = self._pending.snapshot()
        timeout_s = self._settings.send_timeout_ms / 1000.0
        try:
            producer.flush(timeout=timeout_s)
        except KafkaTimeoutError:
            pass  # what is still pending is reported below
        unsent = [(task_id, topic, future) for future, task_id, topic in pending
                  if not (future.is_done and future.succeeded())]
        if unsent:
            abort_pending(producer)  # fails what is left, so nothing is sent after the report
        else:
            producer.close(timeout=timeout_s)
        if unsent:
            _report_unsent(unsent, self._settings.bootstrap_servers, timeout_s)


def translate_send_error(exc: BaseException, settings: Settings) -> EnqueueError:
    """Turn a kafka-python send failure into a ktasks error with a clear message."""
    if isinstance(exc, KafkaTimeoutError):
        return BrokerUnavailable(
            f"Kafka at {settings.bootstrap_servers} did not accept the message within "
            f"{settings.send_timeout_ms} ms (send_timeout_ms): {exc}"
        )
    return EnqueueError(f"sending to Kafka failed: {type(exc).__name__}: {exc}")


def _forget_kafka_atexit(producer: Any) -> None:
    cleanup = getattr(producer, "_cleanup", None)
    if cleanup is not None:
        atexit.unregister(cleanup)


def _register_multiprocessing_exit() -> None:
    """multiprocessing children exit through ``os._exit``: flush through its finalizers instead."""
    global _mp_finalizer_pid
    pid = os.getpid()
    if _mp_finalizer_pid == pid or "multiprocessing" not in sys.modules:
        return
    import multiprocessing.util

    multiprocessing.util.Finalize(None, _flush_all_at_exit, exitpriority=100)
    _mp_finalizer_pid = pid


def _named(task_id: str) -> str:
    # Not every record is a task: worker reports, ledger changelog and result records go this way too.
    return f"task {task_id}" if task_id else "a record without a task id"


def _report_unsent(unsent: list[tuple[str, str, Any]], servers: str, timeout_s: float) -> None:
    """Tell stderr which tasks never reached Kafka, bypassing logging (it may be off or shut down)."""
    lines = [f"ktasks: {len(unsent)} task(s) were NOT sent to Kafka at {servers} before the process "
             f"exited (waited {timeout_s:g} s, send_timeout_ms):"]
    for task_id, topic, future in unsent:
        reason = "still pending" if not future.is_done else f"failed: {future.exception}"
        lines.append(f"ktasks:   {_named(task_id)} for topic {topic}: {reason}")
    text = "\n".join(lines) + "\n"
    stream = sys.stderr if sys.stderr is not None else sys.__stderr__
    try:
        assert stream is not None
        stream.write(text)
        stream.flush()
    except Exception:  # stderr replaced by something closed: write to the descriptor itself
        try:
            os.write(2, text.encode("utf-8", "replace"))
        except OSError:
            pass


_watchdog_pid: int | None = None


def _start_watchdog() -> None:
    """One daemon thread per process checks every producer for a stall (threads do not survive fork)."""
    global _watchdog_pid
    if _watchdog_pid == os.getpid():
        return
    _watchdog_pid = os.getpid()
    threading.Thread(target=_watch, name="ktasks-producer-watchdog", daemon=True).start()


def _watch() -> None:
    pid = os.getpid()
    while _watchdog_pid == pid:
        time.sleep(_WATCHDOG_INTERVAL_S)
        for holder in list(_holders):
            try:
                holder._replace_if_unusable()
            except Exception:  # the watchdog must outlive anything odd in one producer
                logger.debug("producer watchdog", exc_info=True)


def _reset_after_fork() -> None:
    for holder in list(_holders):
        holder._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _flush_all_at_exit() -> None:
    for holder in list(_holders):
        try:
            holder.close_at_exit()
        except Exception:  # exit must go on whatever a broker does
            logger.warning("flushing the producer at exit failed", exc_info=True)
