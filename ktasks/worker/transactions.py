"""``--transactional``: a task's records and its offset commit in one Kafka transaction, all or none.

Without it, a task's ``delay()`` calls, its result and its workflow records
are sent by the child before the task counts as finished, and the offset is
committed later: a worker killed in between has its record delivered again,
and what the task sent is sent again (or, when the ledger skips the task, its
effects stand while it counts as not run).

With it (Kafka's exactly-once path for effects that are Kafka records):

- the child sends nothing: :meth:`ktasks.App.capture_sends` holds every
  record of a task (its ``delay()`` calls, then its result, chain step or chord
  member), and they travel to the parent with the task's result;
- the parent sends them inside its open transaction and, every
  ``commit_interval_ms``, commits the finished offsets in the same transaction
  (``send_offsets_to_transaction`` with the consumer's group metadata, so a
  member fenced by a rebalance cannot commit: KIP-447);
- the ledger records the success as ``prepared`` in the child; the parent
  turns it into ``succeeded`` once the transaction committed, or into
  ``failed`` when it aborted, and then starts every partition again from its
  committed offset so the aborted work runs again. A ``prepared`` success left
  by a worker that died runs again when its record comes back.

Workers, reply readers, result lookups and the chord joiner read with
``isolation_level=read_committed``: records of an aborted transaction are
never seen. Retry and dead-letter copies stay outside the transaction (sent
and acknowledged before the offset is committed, as without it; a copy sent
twice carries the same task id and the ledger runs it once).
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError, KtasksError
from ..kafka import OffsetAndMetadata, TopicPartition
from ..kafka.transactions import TransactionalProducer, transactional_id

logger = logging.getLogger(__name__)

__all__ = ["Transactions", "MAX_SLOTS"]

#: Most transactional workers of one group sharing a ledger file on one host.
MAX_SLOTS = 64


class Transactions:
    """The parent's side: one open transaction, the prepared ledger keys riding in it."""

    def __init__(self, app: Any, settings: Any, group_id: str, host: str) -> None:
        self.app = app
        self.settings = settings
        self.group_id = group_id
        self.host = host
        self.producer: TransactionalProducer | None = None
        self.ledger: Any = None
        self._prepared: list[tuple[str, str]] = []     # (ledger key, task) of successes in the transaction
        self._records = 0                              # records sent in the open transaction
        self._send_error: BaseException | None = None
        self._lock_fd: int | None = None
        self.committed = 0                             # transactions committed
        self.aborted = 0

    @property
    def pending(self) -> bool:
        """Whether the open transaction holds records or prepared successes."""
        return bool(self._records or self._prepared)

    def start(self, worker: Any) -> None:
        """Take a slot, fence the transaction a previous worker of that slot left open, open the ledger."""
        bad = [t.name for t in self.app.tasks.values() if t.options.ledger_transaction]
        if bad:
            raise ConfigurationError(f"--transactional cannot run ledger_transaction tasks ({', '.join(bad)}): "
                                     "their writes commit with the ledger, not with the Kafka transaction")
        if any(t.is_async for t in self.app.tasks.values()):
            raise ConfigurationError("--transactional does not run async def tasks yet")
        place = self._place()
        slot = self._take_slot(place)
        txn_id = transactional_id(self.group_id, self.host, str(place), slot)
        self.producer = TransactionalProducer(self.app.producer.config(), txn_id, self.settings.transaction_timeout_ms)
        self.producer.start()
        if self.settings.ledger_enabled:
            from ..ledger import Ledger

            self.ledger = Ledger(place)
        logger.info("transactional: id %s (slot %d); tasks' records and offsets commit together every %d ms",
                    txn_id, slot, self.settings.commit_interval_ms)

    def _place(self) -> Path:
        from ..ledger import Ledger

        return Path(self.settings.ledger_path or Ledger.default_path(self.group_id)).resolve()

    def _take_slot(self, place: Path) -> int:
        """The lowest slot no running worker holds: the same one again after a restart, fencing the old one."""
        for slot in range(MAX_SLOTS):
            path = f"{place}.tx-{slot}.lock"
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            self._lock_fd = fd
            return slot
        raise ConfigurationError(f"more than {MAX_SLOTS} transactional workers use the ledger {place}")

    # -- what the loop hands in -----------------------------------------------------
    def add(self, records: list[Any]) -> None:
        """Send a finished task's records in the open transaction; a failure aborts it at the next commit."""
        assert self.producer is not None
        for topic, value, key, headers, partition in records:
            try:
                self.producer.send(topic, value, key, [(str(k), bytes(v)) for k, v in headers], partition)
                self._records += 1
            except Exception as exc:  # noqa: BLE001 - any send failure dooms the transaction, told at commit
                logger.warning("transactional send to %s failed (%s: %s): the transaction will be aborted",
                               topic, type(exc).__name__, exc)
                self._send_error = exc

    def prepared(self, key: str, task: str) -> None:
        """A success recorded as prepared rides in the open transaction."""
        self._prepared.append((key, task))

    def dropped(self, key: str, task: str) -> None:
        """A prepared success whose records were not sent (its partition moved): it runs again."""
        if self.ledger is not None:
            self.ledger.release([(key, task)], "its partition moved before its transaction committed")

    # -- ending the transaction ---------------------------------------------------
    def commit(self, offsets: Mapping[TopicPartition, OffsetAndMetadata], group_metadata: Any,
               timeout_ms: int) -> None:
        """Commit the records and ``offsets`` together; raises (the transaction is then still to abort)."""
        assert self.producer is not None
        if self._send_error is not None:
            exc, self._send_error = self._send_error, None
            raise exc
        self.producer.commit(offsets, group_metadata, timeout_ms)
        self.committed += 1
        prepared, self._prepared, self._records = self._prepared, [], 0
        if self.ledger is not None and prepared:
            try:
                self.ledger.confirm(prepared)
            except KtasksError as exc:
                # Committed in Kafka: their offsets never come back, so only a second enqueue with the
                # same idempotency key would find them still prepared (and run them again).
                logger.error("transaction committed, but %d ledger entries stay prepared: %s", len(prepared), exc)

    def abort(self, reason: str, timeout_ms: int) -> None:
        """Abort the open transaction; its prepared successes run again when their records come back."""
        assert self.producer is not None
        self.producer.abort(timeout_ms)
        self.aborted += 1
        prepared, self._prepared, self._records = self._prepared, [], 0
        self._send_error = None
        if self.ledger is not None and prepared:
            try:
                self.ledger.release(prepared, f"transaction aborted: {reason}")
            except KtasksError as exc:
                # Left prepared with the pids of this worker's live children, a redelivery of them waits
                # (as for a running twin) until those children are replaced; the children's own ledger
                # writes fail as well when the file is this broken.
                logger.error("transaction aborted, but %d ledger entries stay prepared: %s", len(prepared), exc)
        logger.warning("transaction aborted (%s): %d task(s) will run again from the committed offsets",
                       reason, len(prepared))

    def close(self) -> None:
        if self.producer is not None:
            if self.producer.open:
                self.abort("the worker is stopping", 5000)
            self.producer.close()
            self.producer = None
        if self.ledger is not None:
            self.ledger.close()
            self.ledger = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
