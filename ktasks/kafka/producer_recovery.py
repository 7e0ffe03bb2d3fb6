"""The one place where ktasks works around kafka-python's producer getting stuck.

The cause (kafka-python 3.0.12, ``kafka/producer/sender.py`` and
``transaction_manager.py``): when a batch that was already sent expires at
``delivery_timeout_ms`` (a broker stall longer than that, such as the ~12 s
of a KRaft controller failover), the sender calls
``TransactionManager.reset_producer_id()``. That sets the producer id to -1
but leaves the manager's state READY. The sender then asks for a new id with
``init_producer_id()``, which acts only in state UNINITIALIZED, so no
InitProducerId request is ever sent; and while there is no producer id the
sender never drains nor expires a batch. Every pending and later record waits
forever, even after the broker is back.

Two layers, both installed by :class:`ktasks.kafka.producer.ProducerHolder` on every
producer it builds (the app's, and so the worker's retry and dead-letter
copies, which go through the app):

* :func:`install_producer_id_recovery` makes ``init_producer_id()`` also act
  in that READY-without-id state, so the producer asks for a new id and goes
  on sending. Records drained before the reset fail (their ``wait_sent()``
  raises); later ones are delivered.
* :func:`unusable_reason` says when a producer must be replaced:
  - its transaction manager is in FATAL_ERROR. kafka-python 3.0.12 makes any
    error on the InitProducerId request other than a disconnection fatal
    (``TxnRequestHandler.on_complete``: a request timeout during the same
    failover is "Could not execute transactional request for unknown
    reasons"), and an idempotent producer never leaves that state: every
    later send fails;
  - it stopped making progress: kafka-python promises to complete every
    record within ``delivery_timeout_ms``; a record older than that plus a
    margin means the sender is stuck some other way.
  The holder then fails what is left with :func:`abort_pending` (so each
  ``wait_sent()`` raises) and builds a new producer.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from kafka import KafkaProducer
from kafka.producer.transaction_manager import TransactionState

logger = logging.getLogger(__name__)

__all__ = ["abort_pending", "has_fatal_error", "install_producer_id_recovery", "stalled_for_s", "unusable_reason"]


def install_producer_id_recovery(producer: KafkaProducer) -> bool:
    """Make ``producer`` request a new producer id after kafka-python reset it (see the module doc).

    Returns:
        False when the producer has no idempotent, non-transactional
        transaction manager (nothing to fix), else True.
    """
    manager: Any = getattr(producer, "_transaction_manager", None)
    if manager is None or manager.is_transactional():
        return False
    original = manager.init_producer_id

    def init_producer_id() -> None:
        with manager._lock:
            if manager._current_state == TransactionState.READY and not manager.has_producer_id():
                logger.warning("Kafka producer lost its producer id (a batch expired after it was sent); "
                               "requesting a new one")
                # kafka-python forbids moving back to UNINITIALIZED through _transition_to;
                # that is exactly the state in which init_producer_id() sends the request.
                manager._current_state = TransactionState.UNINITIALIZED
        original()

    manager.init_producer_id = init_producer_id
    return True


def stalled_for_s(producer: KafkaProducer, now: float | None = None) -> float:
    """Age in seconds of the oldest record the producer has neither delivered nor failed (0 if none)."""
    accumulator: Any = getattr(producer, "_accumulator", None)
    if accumulator is None:
        return 0.0
    batches = accumulator._incomplete.all()
    if not batches:
        return 0.0
    now = time.monotonic() if now is None else now
    return max(0.0, now - min(batch.created for batch in batches))


def has_fatal_error(producer: KafkaProducer) -> bool:
    """Whether an idempotent (non-transactional) producer's state is FATAL_ERROR: every send will fail."""
    manager: Any = getattr(producer, "_transaction_manager", None)
    return (manager is not None and not manager.is_transactional()
            and manager._current_state == TransactionState.FATAL_ERROR)


def unusable_reason(producer: KafkaProducer, stall_limit_s: float, now: float | None = None) -> str | None:
    """Why ``producer`` must be replaced (see the module doc), or None while it is usable."""
    if has_fatal_error(producer):
        manager: Any = getattr(producer, "_transaction_manager", None)
        return f"its producer state failed for good ({manager.last_error!r})"
    stalled_s = stalled_for_s(producer, now)
    if stalled_s > stall_limit_s:
        return (f"it made no progress for {stalled_s:.0f} s (limit {stall_limit_s:g} s: delivery_timeout_ms "
                "plus a margin)")
    return None


def abort_pending(producer: KafkaProducer) -> None:
    """Close ``producer`` at once: its sender fails every pending record, so each future completes."""
    sender: Any = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()
        sender.join(5.0)
    try:
        producer.close(timeout=0)
    except Exception:  # already closed or its flush timed out: the sender has aborted the batches
        logger.debug("closing the stuck producer", exc_info=True)
