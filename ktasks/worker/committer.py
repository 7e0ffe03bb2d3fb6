"""Committing finished offsets, retrying failed commits, and starting partitions at the committed offset.

Each commit carries, besides the committable offset, the offsets finished
above it (the offset map in the commit's metadata), so the next owner skips
them. A retriable commit failure is retried with backoff until
``commit_retry_deadline_ms``; then the finished records are reported to the
dead-letter topic as ``commit-failed`` and every partition restarts from its
committed offset (:meth:`Committer.reset_to_committed`), as a new owner would.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .. import faults
from ..deadletter import publish as publish_dead_letter
from ..kafka import OffsetAndMetadata, TopicPartition
from ..kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from ..middleware import deadletter
from .async_commit import AsyncCommitter
from .outbox import Outbox
from .partitions import Partitions, PartitionState
from .transactions import Transactions

logger = logging.getLogger(__name__)

__all__ = ["Committer", "UNKNOWN", "COMMIT_TIMEOUT_MS"]

#: Longest a commit may block the loop (kafka-python's default is 30 s); then it is retried.
COMMIT_TIMEOUT_MS = 5000

#: What :meth:`Committer.committed` returns when it gave up because the worker is stopping.
UNKNOWN: Any = object()


class Committer:
    """Commits for the partitions of ``partitions``; ``consumer`` is set once the worker has one."""

    def __init__(self, app: Any, settings: Any, partitions: Partitions, outbox: Outbox, stats: Any, *,
                 group_id: str, host: str, stopping: Callable[[], bool], check_topics: Callable[[], None]) -> None:
        self.app = app
        self.settings = settings
        self.partitions = partitions
        self.outbox = outbox
        self.stats = stats
        self.group_id = group_id
        self.host = host
        self.consumer: Any = None
        self._stopping = stopping
        self._check_topics = check_topics
        self._next_commit = 0.0
        self._failing_since: float | None = None
        self._failures = 0
        self._offset_maps: dict[TopicPartition, str] = {}    # commit metadata read with the offset
        self._async = AsyncCommitter(COMMIT_TIMEOUT_MS / 1000.0)   # periodic commits
        self.transactions: Transactions | None = None    # --transactional: commits end the transaction
        self._pid = os.getpid()

    # -- where to start ------------------------------------------------------------
    def committed(self, tp: TopicPartition) -> Any:
        """The committed offset of ``tp`` (None: the group never committed one).

        A failed lookup is never read as "no commit": that would restart the partition from
        the beginning, or with ``auto_offset_reset=latest`` skip every uncommitted record.
        It is retried with backoff until it answers; only a stop request ends the retries,
        with :data:`UNKNOWN` (the partition is then not started at all).
        """
        failures = 0
        while True:
            try:
                found = self.consumer.committed(tp, metadata=True)
                self._offset_maps[tp] = found.metadata if found is not None else ""
                return found.offset if found is not None else None
            except KafkaError as exc:
                failures += 1
                if self._stopping():
                    logger.warning("cannot read the committed offset of %s/%d (%s) while stopping: not "
                                   "starting it", tp.topic, tp.partition, exc)
                    return UNKNOWN
                backoff = min(5.0, 0.1 * 2 ** min(failures, 6))
                logger.warning("cannot read the committed offset of %s/%d (%s: %s); asking again in %.1fs "
                               "(never guessing a start position)", tp.topic, tp.partition,
                               type(exc).__name__, exc, backoff)
                time.sleep(backoff)

    def start_at(self, tp: TopicPartition, committed: int | None) -> None:
        """Start ``tp`` afresh (a new epoch) at ``committed``, with the offset map read with it."""
        self.partitions.start(tp, committed, self._offset_maps.pop(tp, "") if committed is not None else "")

    def reset_to_committed(self) -> None:
        """Start every owned partition again from its committed offset, as a new owner would.

        Everything taken since is forgotten (a new epoch: late completions are not
        committed) and delivered again; the ledger keeps finished tasks from running
        twice. This stands in for leaving and rejoining the group, which with
        kafka-python 3.0's sticky assignors can leave partitions unassigned for minutes.
        """
        tps = list(self.partitions.states)
        self.partitions.drop(tps)
        for tp in tps:
            committed = self.committed(tp)
            if committed is UNKNOWN:
                continue          # stopping: leave it unstarted
            self.start_at(tp, committed)
            self.consumer.resume(tp)
            logger.info("restarting %s/%d from committed offset %s", tp.topic, tp.partition, committed)

    # -- commits ---------------------------------------------------------------------
    def maybe_commit(self, force: bool = False, only: Iterable[TopicPartition] | None = None,
                     timeout_ms: int | None = None) -> bool:
        """Commit finished offsets; returns False when a retriable error left something uncommitted.

        Periodic commits (not ``force``) are asynchronous, one in flight (see ``async_commit``):
        a broker stall delays them and nothing else. Forced ones (revoke, shutdown) block.
        """
        now = time.monotonic()
        if self.transactions is not None:
            return self._commit_transaction(force, now, timeout_ms or COMMIT_TIMEOUT_MS)
        done = self._async.poll()
        if done is not None:
            self._outcome(done.offsets, done.context, done.error, now)
        if not force and (now < self._next_commit or self._async.in_flight):
            return True
        self._next_commit = now + self.settings.commit_interval_ms / 1000.0
        states = self.partitions.states
        targets = [states[tp] for tp in (only if only is not None else list(states)) if tp in states]
        offsets = self._finished_offsets(targets)
        if self.app.middleware.has("commit_offsets"):
            # Middleware may hold a record back until it is durable (the ledger changelog).
            offsets = self.app.middleware.commit_offsets(offsets, force)
        if not offsets:
            return True
        sent_from = {tp: states[tp] for tp in offsets}
        try:
            faults.point("before_commit", self._pid)
            faults.point("commit", self._pid)
            if not force:
                self._async.send(self.consumer, offsets, sent_from)
                return True
            # Bounded: kafka-python retries a retriable error (a deleted topic's partition, a
            # moving coordinator) for 30 s by default, with the whole loop stopped.
            self.consumer.commit(offsets, timeout_ms=timeout_ms or COMMIT_TIMEOUT_MS)
        except (KafkaError, faults.FaultInjected) as exc:
            return self._outcome(offsets, sent_from, exc, now)
        return self._outcome(offsets, sent_from, None, now)

    @staticmethod
    def _finished_offsets(states: Iterable[PartitionState]) -> dict[TopicPartition, OffsetAndMetadata]:
        """What to commit for ``states``: each one's committable offset, with the offset map above it."""
        return {ps.tp: OffsetAndMetadata(ps.tracker.committable, ps.tracker.offset_map(), -1)
                for ps in states if ps.tracker.needs_commit()}

    def _commit_transaction(self, force: bool, now: float, timeout_ms: int) -> bool:
        """--transactional: commit every finished offset with the records of the open transaction.

        The whole transaction, whatever ``only`` a revoke asked for: its records belong to tasks of
        every partition. The ledger changelog's hold (``commit_offsets``) does not apply: holding an
        offset back would commit its task's records without it. On failure the transaction is aborted
        and every partition starts again from its committed offset, so the aborted tasks run again.
        """
        tx = self.transactions
        assert tx is not None
        if not force and now < self._next_commit:
            return True
        self._next_commit = now + self.settings.commit_interval_ms / 1000.0
        states = self.partitions.states
        offsets = self._finished_offsets(states.values())
        if not offsets and not tx.pending:
            return True
        sent_from = {tp: states[tp] for tp in offsets}
        try:
            faults.point("before_commit", self._pid)
            faults.point("commit", self._pid)
            tx.commit(offsets, self.consumer.group_metadata(), timeout_ms)
        except (KafkaError, faults.FaultInjected) as exc:
            self.app.middleware.after("commit_failed", exc)
            logger.warning("transactional commit failed (%s: %s): aborting the transaction", type(exc).__name__,
                           exc)
            tx.abort(f"{type(exc).__name__}: {exc}", COMMIT_TIMEOUT_MS)
            for ps in self.partitions:
                ps.finished.clear()
            if not self._stopping():
                self.reset_to_committed()
            return False
        return self._outcome(offsets, sent_from, None, now)

    def _outcome(self, offsets: Mapping[TopicPartition, OffsetAndMetadata],
                 sent_from: Mapping[TopicPartition, PartitionState],
                 exc: BaseException | None, now: float) -> bool:
        """Apply a commit's result (synchronous, or an asynchronous one that came back)."""
        if isinstance(exc, (CommitFailedError, RebalanceInProgressError)):
            self.app.middleware.after("commit_failed", exc)
            # Not fatal: a rebalance is under way. Its revoke callback commits what finished
            # before the partitions move; otherwise the next commit interval tries again.
            logger.warning("commit rejected (%s): the group is rebalancing and these partitions may move; "
                           "finished tasks are in the ledger, so their next owner will not run them again",
                           exc)
            return False
        if exc is not None:
            self.app.middleware.after("commit_failed", exc)
            return self._error(exc, now)
        self.app.middleware.after("offsets_committed", {tp: om.offset for tp, om in offsets.items()})
        states = self.partitions.states
        for tp, om in offsets.items():
            ps = states.get(tp)
            # An asynchronous commit may answer after its partition moved (a new state now), or
            # after a synchronous commit of later offsets: neither is rolled back.
            if ps is None:
                continue
            if sent_from.get(tp) is not ps or om.offset < (ps.tracker.committed or 0):
                continue
            ps.tracker.mark_committed(om.offset, om.metadata)
            for offset in [o for o in ps.finished if o < om.offset]:
                del ps.finished[offset]
                self.stats.committed += 1
        if self._failing_since is not None:
            logger.info("offset commit succeeded again after %d failures", self._failures)
        self._failing_since = None
        self._failures = 0
        faults.point("after_commit", self._pid)
        return True

    def final_commit(self, lock: Any, timeout_ms: int) -> None:
        """Commit what finished before stopping; when a rebalance rejects it, take part in the rebalance.

        Polling lets the rebalance finish: partitions it takes away are committed by the revoke
        callback, the others by the next attempt. Gives up after ``shutdown_commit_timeout_ms``
        (the coordinator gone, say); what is left is counted in the exit status.
        """
        timeout_s = self.settings.shutdown_commit_timeout_ms / 1000.0
        deadline = time.monotonic() + timeout_s
        told = False
        while True:
            with lock:
                if self.maybe_commit(force=True, timeout_ms=timeout_ms):
                    return
                left = sum(len(ps.finished) for ps in self.partitions)
            if not left or time.monotonic() >= deadline:
                return
            if not told:
                told = True
                logger.warning("final commit of %d finished record(s) failed: taking part in the rebalance and "
                               "trying again for up to %.0fs (shutdown_commit_timeout_ms)", left, timeout_s)
            try:
                self.consumer.poll(timeout_ms=200)    # records it returns are not taken: never committed
            except KafkaError as exc:
                logger.warning("poll while stopping failed (%s: %s)", type(exc).__name__, exc)
                time.sleep(0.2)

    def _error(self, exc: BaseException, now: float) -> bool:
        retriable = bool(getattr(exc, "retriable", False))
        self._failures += 1
        if not self._stopping():
            self._check_topics()      # a deleted topic makes commits fail: say so, recreate it
        if self._failing_since is None:
            self._failing_since = now
        failing_for = now - self._failing_since
        deadline = self.settings.commit_retry_deadline_ms / 1000.0
        if self._stopping():
            # Shutting down: no report-and-restart now. What stays uncommitted is counted in
            # the exit status and the last log line.
            logger.warning("offset commit failed while stopping (%s: %s)", type(exc).__name__, exc)
            return False
        if retriable and failing_for < deadline:
            backoff = min(5.0, 0.05 * 2 ** min(self._failures, 7))
            self._next_commit = now + backoff
            logger.warning("offset commit failed (%s: %s), retriable; retry %d in %.2fs", type(exc).__name__,
                           exc, self._failures, backoff)
            return False
        logger.error("offset commit failed for %.1fs (%s: %s): reporting finished records as commit-failed "
                     "and restarting from the committed offsets", failing_for, type(exc).__name__, exc)
        self._report_commit_failed()
        return False

    def _report_commit_failed(self) -> None:
        reason, exc_type, exc_message = deadletter.commit_failed()
        for ps in self.partitions:
            for job in sorted(ps.finished.values(), key=lambda j: j.offset):
                if job.offset < (ps.tracker.committed or 0):
                    continue
                dl = deadletter.record_of(job, reason, exc_type, exc_message, None, group=self.group_id,
                                          host=self.host)
                try:
                    publish_dead_letter(self.app, dl)
                except Exception:
                    logger.exception("could not report commit-failed record %s@%d", job.record.topic, job.offset)
            ps.finished.clear()
        if not self.outbox.flush_quietly(10.0):
            logger.error("some commit-failed reports are still unsent after 10s")
        self._failing_since = None
        self._failures = 0
        self.reset_to_committed()
