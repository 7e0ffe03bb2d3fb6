"""A transactional producer whose every blocking call has a deadline.

kafka-python 3.0's ``send_offsets_to_transaction``, ``commit_transaction`` and
``abort_transaction`` wait on their request's result with no timeout: with the
coordinator's broker gone, the worker's loop would stop for good. The calls
here drive the same transaction manager and wait at most ``timeout_ms``, then
raise :class:`KafkaTimeoutError`; the caller aborts (or, when that too times
out, builds a new producer, whose ``init_transactions`` fences the old one and
aborts its open transaction on the broker).

The transactional id must be stable across restarts of the same worker slot,
so that a restarted worker fences the transaction its killed predecessor left
open (instead of every ``read_committed`` reader of those partitions waiting
``transaction_timeout_ms`` for the broker to abort it), and unique among the
workers running at the same time (two live producers with one id fence each
other). :func:`transactional_id` derives it from the group, the host, the
ledger file and a slot number the worker holds a lock on.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Mapping
from typing import Any

from kafka import KafkaProducer

from .. import faults
from .clients import OffsetAndMetadata, TopicPartition
from .errors import KafkaError, KafkaTimeoutError

logger = logging.getLogger(__name__)

__all__ = ["CapturedSend", "TransactionalProducer", "transactional_id"]


def transactional_id(group_id: str, host: str, place: str, slot: int) -> str:
    """The transactional id of worker slot ``slot`` of ``group_id`` on ``host`` with its ledger at ``place``."""
    digest = hashlib.sha1(f"{host}\0{place}".encode()).hexdigest()[:10]
    return f"ktasks-{group_id}-{host}-{digest}-{slot}"


class TransactionalProducer:
    """One transaction at a time: ``send`` opens it, ``commit`` (with offsets) or ``abort`` ends it."""

    def __init__(self, config: Mapping[str, Any], txn_id: str, transaction_timeout_ms: int) -> None:
        # ``config``: the process's producer settings (ProducerHolder.config), as the schedulers use them.
        self._config = dict(config, transactional_id=txn_id, transaction_timeout_ms=transaction_timeout_ms,
                            client_id=f"{config.get('client_id', 'ktasks')}-tx")
        self.txn_id = txn_id
        self._producer: KafkaProducer | None = None
        self.open = False        # a transaction was begun and not yet ended

    def start(self) -> None:
        """Build the producer and fence any earlier one with this id (its open transaction is aborted)."""
        if self._producer is not None:
            return
        producer = KafkaProducer(**self._config)
        try:
            producer.init_transactions()       # bounded by max_block_ms
        except BaseException:
            producer.close(timeout=0)
            raise
        self._producer = producer
        self.open = False
        logger.info("transactional producer %s ready", self.txn_id)

    def _begun(self) -> KafkaProducer:
        """The producer, with a transaction open (begun here if none is)."""
        self.start()
        assert self._producer is not None
        if not self.open:
            self._producer.begin_transaction()
            self.open = True
        return self._producer

    def send(self, topic: str, value: bytes | None, key: bytes | None = None,
             headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> Any:
        """Send one record inside the open transaction, beginning one if none is."""
        return self._begun().send(topic, value=value, key=key, headers=headers or [], partition=partition)

    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_metadata: Any,
               timeout_ms: int) -> None:
        """Commit the open transaction (begun here if none is) with ``offsets`` of the group; raises on failure."""
        producer = self._begun()
        # kafka-python's EndTxn does not wait for the transaction's batches: flush them first.
        producer.flush(timeout=timeout_ms / 1000.0)
        manager = producer._transaction_manager
        if offsets:
            self._wait(manager.send_offsets_to_transaction(dict(offsets), group_metadata), timeout_ms,
                       "sending the offsets to the transaction")
        faults.point("transaction_prepared", os.getpid())
        self._wait(manager.begin_commit(), timeout_ms, "committing the transaction")
        self.open = False

    def abort(self, timeout_ms: int) -> bool:
        """Abort the open transaction; False when that failed too (the producer is then replaced)."""
        producer = self._producer
        if producer is None:
            return True
        try:
            if self.open or producer._transaction_manager.has_abortable_error():
                self._wait(producer._transaction_manager.begin_abort(), timeout_ms, "aborting the transaction")
            self.open = False
            return True
        except KafkaError as exc:
            # A fatal error (fenced) or a broker that does not answer: a new producer with
            # the same id fences this one, and the broker aborts what it left open.
            logger.warning("aborting transaction of %s failed (%s: %s): replacing the producer", self.txn_id,
                           type(exc).__name__, exc)
            self.replace()
            return False

    def replace(self) -> None:
        """Drop this producer; the next call builds and initializes a new one."""
        producer, self._producer = self._producer, None
        self.open = False
        if producer is not None:
            try:
                producer.close(timeout=0)
            except Exception:  # noqa: BLE001 - closing a broken producer must not fail the caller
                logger.debug("closing the old transactional producer failed", exc_info=True)

    def close(self, timeout_s: float = 5.0) -> None:
        producer, self._producer = self._producer, None
        if producer is not None:
            producer.close(timeout=timeout_s)

    def _wait(self, result: Any, timeout_ms: int, what: str) -> None:
        assert self._producer is not None
        self._producer._sender.wakeup()
        if not result.wait(timeout_ms=timeout_ms):       # raises the request's error, if it failed
            raise KafkaTimeoutError(f"{what} not answered within {timeout_ms} ms")


class _Metadata:
    """What ``wait_sent()`` returns for a captured record: its offset is known only once its transaction commits."""

    def __init__(self, topic: str, partition: int | None) -> None:
        self.topic = topic
        self.partition = -1 if partition is None else partition
        self.offset = -1


class CapturedSend:
    """Stands for the send future of a record held for the worker's transaction.

    A task run by a transactional worker does not send: its records go back to
    the worker parent with its result and are sent inside the transaction that
    commits its offset. Nothing about them can fail in the task itself.
    """

    is_done = True
    exception = None

    def __init__(self, topic: str, value: bytes | None, key: bytes | None,
                 headers: list[tuple[str, bytes]], partition: int | None) -> None:
        self.record = [topic, value, key, [list(h) for h in headers], partition]
        self._metadata = _Metadata(topic, partition)

    def get(self, timeout: float | None = None) -> _Metadata:
        return self._metadata

    def succeeded(self) -> bool:
        return True

    def failed(self) -> bool:
        return False

    def add_callback(self, fn: Any, *args: Any, **kwargs: Any) -> CapturedSend:
        fn(*args, self._metadata, **kwargs)
        return self

    def add_errback(self, fn: Any, *args: Any, **kwargs: Any) -> CapturedSend:
        return self

    def add_both(self, fn: Any, *args: Any, **kwargs: Any) -> CapturedSend:
        return self.add_callback(fn, *args, **kwargs)
