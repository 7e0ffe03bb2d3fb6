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
"""

from __future__ import annotations

import atexit
import logging
import os
import sys
import threading
import weakref
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from .errors import BrokerUnavailable, EnqueueError
from .settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["ProducerHolder", "translate_send_error"]

_holders: weakref.WeakSet[ProducerHolder] = weakref.WeakSet()
# Producers inherited across a fork: kept referenced so that the child never
# runs their finalizers (flush, close) against the parent's sockets.
_inherited: list[Any] = []
# Pid of the process that registered a multiprocessing exit finalizer.
_mp_finalizer_pid: int | None = None


class ProducerHolder:
    """Builds the producer on first use in each process and closes it at exit."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._lock = threading.Lock()
        self._producer: KafkaProducer | None = None
        self._pid = os.getpid()
        _holders.add(self)

    def config(self) -> dict[str, Any]:
        s = self._settings
        cfg = s.kafka_common()
        cfg.update(
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
        )
        # Options the user passed explicitly win over our choices.
        cfg.update(s.kafka_options)
        return cfg

    def get(self) -> KafkaProducer:
        """The producer of this process, built on first call."""
        pid = os.getpid()
        producer = self._producer
        if producer is not None and self._pid == pid:
            return producer
        with self._lock:
            if self._pid != pid:  # forked without the at-fork hook (should not happen)
                self._after_fork()
            if self._producer is None:
                try:
                    producer = KafkaProducer(**self.config())
                except KafkaTimeoutError as exc:
                    raise BrokerUnavailable(
                        f"Kafka at {self._settings.bootstrap_servers} unreachable after "
                        f"{self._settings.send_timeout_ms} ms (send_timeout_ms)"
                    ) from exc
                except KafkaError as exc:
                    raise EnqueueError(f"cannot create Kafka producer: {exc}") from exc
                # Our exit hook flushes with a longer timeout than kafka-python's own.
                _forget_kafka_atexit(producer)
                _register_multiprocessing_exit()
                self._producer = producer
            return self._producer

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


def _reset_after_fork() -> None:
    for holder in list(_holders):
        holder._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)


@atexit.register
def _flush_all_at_exit() -> None:
    for holder in list(_holders):
        try:
            holder.close(timeout_s=5.0)
        except Exception:  # exit must go on whatever a broker does
            logger.warning("flushing the producer at exit failed", exc_info=True)
