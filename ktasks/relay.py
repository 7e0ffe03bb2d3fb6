"""The outbox relay: publish committed ``ktasks_outbox`` rows to Kafka, then delete them.

One cycle: claim a batch of committed rows (oldest first; see
:mod:`ktasks.appdb.store` for how relays share the table), send every row with
the app's producer (``acks=all``, idempotent, so rows of one key keep their
order on their partition), wait for the acknowledgements, delete the rows that
were acknowledged and commit. A crash anywhere before that commit leaves the
rows in the table: the next relay publishes them again, with the same task id,
and the worker's ledger skips the copy. A row is never deleted before Kafka
acknowledged it, so nothing is lost.

When a send fails, rows of the same key after the failed one stay in the
table with it, so the key's order survives the retry.

The relay waits with ``LISTEN/NOTIFY`` on PostgreSQL (woken by each commit
that wrote outbox rows) and polls every ``poll_interval_s`` elsewhere. It logs
a progress line every ``report_interval_s`` while it works.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from . import faults
from .app import App
from .appdb.outbox import unpack_headers
from .appdb.store import OutboxRow, OutboxStore, open_store, redact_dsn
from .errors import KtasksError
from .kafka.errors import KafkaError

logger = logging.getLogger(__name__)

__all__ = ["Relay", "RelayStats"]


@dataclass
class RelayStats:
    """Counters since the relay started."""

    published: int = 0
    failed: int = 0
    held_back: int = 0
    batches: int = 0
    started: float = field(default_factory=time.monotonic)


class Relay:
    """Publishes one database's outbox through ``app``'s producer.

    ``dsn`` names the database (``postgresql://...`` or ``sqlite:///path``);
    ``store`` may be given instead (tests). The table is created at start
    unless ``create_table`` is false.
    """

    def __init__(self, app: App, dsn: str | None = None, *, store: OutboxStore | None = None,
                 batch_size: int = 500, poll_interval_s: float = 0.2, idle_check_s: float = 5.0,
                 report_interval_s: float = 10.0, create_table: bool = True) -> None:
        if store is None:
            if dsn is None:
                raise KtasksError("Relay needs a dsn or a store")
            store = open_store(dsn, create=create_table)
        if batch_size < 1:
            raise KtasksError(f"relay batch size must be at least 1, got {batch_size}")
        self.app = app
        self.store = store
        self.dsn = redact_dsn(dsn) if dsn else type(store).__name__
        self.batch_size = batch_size
        # With notifications the relay still looks now and then: a notification can be lost with
        # a dropped connection, and held-back rows of another relay's key need a second look.
        self.wait_s = idle_check_s if store.waits_for_notifications else poll_interval_s
        self.retry_wait_s = poll_interval_s
        self.report_interval_s = report_interval_s
        self.stats = RelayStats()
        self.stop_event = threading.Event()
        self._last_report = time.monotonic()
        self._reported_published = 0

    # -- one batch ---------------------------------------------------------------
    def relay_batch(self) -> tuple[int, int]:
        """Publish one batch; returns (rows published and deleted, rows held back or failed)."""
        rows, held = self.store.claim(self.batch_size)
        if not rows:
            self.store.release()
            return 0, held
        try:
            acked = self._publish(rows)
        except BaseException:
            self.store.release()
            raise
        # The window the crash tests aim at: rows acknowledged by Kafka, not yet deleted.
        faults.point("relay_after_publish")
        self.store.finish(acked)
        self.stats.batches += 1
        self.stats.published += len(acked)
        self.stats.held_back += held
        failed = len(rows) - len(acked)
        self.stats.failed += failed
        return len(acked), held + failed

    def _publish(self, rows: list[OutboxRow]) -> list[int]:
        """Send rows in id order; wait for every acknowledgement; return the ids safe to delete."""
        topics = sorted({r.topic for r in rows})
        for topic in topics:
            self.app.ensure_topics([topic], partitions=self._partitions(topic))
        pending: list[tuple[OutboxRow, Any]] = []
        for row in rows:
            try:
                future = self.app.send_raw(row.topic, row.value, key=row.key, headers=unpack_headers(row.headers))
            except KtasksError as exc:
                future = exc
            pending.append((row, future))
        timeout_s = self.app.settings.send_timeout_ms / 1000.0
        deadline = time.monotonic() + timeout_s
        acked: list[int] = []
        failed_keys: set[bytes] = set()
        for row, future in pending:
            error: BaseException | None = future if isinstance(future, BaseException) else None
            if error is None:
                try:
                    future.get(timeout=max(0.0, deadline - time.monotonic()))
                except KafkaError as exc:
                    error = exc
            if error is not None:
                logger.error("outbox row %d (topic %s) was not published: %s: %s; it stays in the outbox and is "
                             "tried again", row.id, row.topic, type(error).__name__, error)
                if row.key is not None:
                    failed_keys.add(row.key)
                continue
            if row.key is not None and row.key in failed_keys:
                continue  # an older row of this key failed: keep this one for the same retry, in order
            acked.append(row.id)
        return acked

    def _partitions(self, topic: str) -> int | None:
        for task in self.app.tasks.values():
            if task.topic == topic:
                return task.options.partitions
        return None

    # -- the loop ----------------------------------------------------------------
    def run(self, until: Callable[[], bool] | None = None) -> RelayStats:
        """Relay until :meth:`stop` is called (or ``until()`` is true); returns the counters."""
        mode = "LISTEN/NOTIFY" if self.store.waits_for_notifications else f"polling every {self.wait_s:g} s"
        logger.info("relay: publishing the outbox of %s to Kafka at %s (%s, batches of %d)", self.dsn,
                    self.app.settings.bootstrap_servers, mode, self.batch_size)
        backoff_s = self.retry_wait_s
        try:
            while not self.stop_event.is_set() and not (until and until()):
                try:
                    published, left = self.relay_batch()
                except (KtasksError, KafkaError, OSError) as exc:
                    logger.error("relay: batch failed (%s: %s); trying again in %.1f s", type(exc).__name__, exc,
                                 backoff_s)
                    self.stop_event.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, 30.0)
                    continue
                self._maybe_report()
                if published == self.batch_size:
                    continue  # more may be waiting
                if left:
                    # Rows of another relay's key, or rows whose send failed: look again soon.
                    self.stop_event.wait(backoff_s)
                    backoff_s = min(backoff_s * 2, 30.0) if not published else self.retry_wait_s
                    continue
                backoff_s = self.retry_wait_s
                if not published:
                    self.store.wait(self.wait_s, self.stop_event)
        finally:
            self._report(final=True)
        return self.stats

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        self.store.close()

    def _maybe_report(self) -> None:
        if time.monotonic() - self._last_report >= self.report_interval_s:
            self._report()

    def _report(self, final: bool = False) -> None:
        now = time.monotonic()
        elapsed = max(now - self._last_report, 1e-9)
        delta = self.stats.published - self._reported_published
        if delta or final:
            try:
                waiting, oldest = self.store.backlog()
                backlog = f"{waiting} waiting" + (f", oldest {time.time() - oldest:.1f} s" if oldest else "")
            except Exception as exc:  # a report must not stop the relay
                backlog = f"backlog unknown ({type(exc).__name__})"
            logger.info("relay: %s%d published in %.1f s (%.0f/s), %d in total; %s", "stopping: " if final else "",
                        delta, elapsed, delta / elapsed, self.stats.published, backlog)
        self._last_report = now
        self._reported_published = self.stats.published
