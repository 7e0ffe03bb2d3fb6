"""Taking records from a poll: decode, ask the intake middleware, wait for due times, queue by key.

Each record of an owned partition is tracked (its offset uncommitted until it
finishes), decoded, and then, in this order:

* an undecodable record, or one naming a task the app lacks, is dead-lettered;
* the intake middleware decide (``Skip``, ``Defer``, ``Reject``; see
  :meth:`ktasks.middleware.MiddlewareStack.decide`);
* a record deferred by a middleware for a short while (at most
  :data:`DEFER_IN_MEMORY_S`) waits in memory, in a heap, keeping its place
  for its key, and is offered to the intake middleware again at its time; a
  partition keeps at most a quarter of ``prefetch_per_partition`` such records
  in memory, so they never pause it: the others of its partition go on;
* a record not yet due (a countdown, a retry, a longer deferral) waits: on a
  delay tier the partition is held (paused, and sought back to it) until it is
  due, at most for the tier's delay; anywhere else it moves to the delay tier
  of the time left;
* the rest queue for a child, strictly one at a time per key.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from ..errors import DecodeError
from ..headers import trusted_marks
from ..kafka import TopicPartition
from ..message import decode, encode
from ..middleware import Decision, Defer, Intake, Reject, Skip
from ..middleware import deadletter as dead
from .committer import UNKNOWN, Committer
from .outbox import Outbox, clock
from .outcomes import Outcomes
from .partitions import Job, Partitions, PartitionState

logger = logging.getLogger(__name__)

__all__ = ["RecordIntake", "DEFER_IN_MEMORY_S"]

#: Longest a deferred record waits in the worker's memory; a longer deferral goes to a delay tier.
DEFER_IN_MEMORY_S = 5.0


class RecordIntake:
    """Turns polled records into jobs; ``ready(job)`` queues one for a child."""

    def __init__(self, app: Any, partitions: Partitions, committer: Committer, outbox: Outbox,
                 outcomes: Outcomes, ready: Callable[[Job], None], *, retry_topics: dict[str, str],
                 tier_s: dict[str, float], ready_first: Callable[[Job], None] | None = None) -> None:
        self.app = app
        self.partitions = partitions
        self.committer = committer
        self.outbox = outbox
        self.outcomes = outcomes
        self._ready = ready
        self._ready_first = ready_first or ready
        self.retry_topics = retry_topics     # retry/delay topic -> its task topic
        self.tier_s = tier_s                 # delay-tier topic -> its delay, the longest it holds a partition
        self.consumer: Any = None
        self._seq = 0
        # Short deferrals: (until, seq, job), soonest first; and how many each partition keeps.
        self._deferred: list[tuple[float, int, Job]] = []
        self._deferred_by: dict[PartitionState, int] = {}
        self._defer_cap = max(1, partitions.prefetch // 4)
        partitions.on_drop(self.forget)

    def accept(self, tp: TopicPartition, records: list[Any]) -> None:
        ps = self.partitions.get(tp)
        if ps is None and tp in self.consumer.assignment():
            self._before_assignment(tp, records)
            return
        if ps is None or ps.revoking:
            logger.debug("dropping %d records of %s/%d: partition %s", len(records), tp.topic, tp.partition,
                         "not ours" if ps is None else "being revoked")
            return
        now = time.time()
        origin = self.retry_topics.get(tp.topic, tp.topic)
        on_ktasks_topic = tp.topic in self.retry_topics
        middleware = self.app.middleware
        asks = middleware.has("intake")
        for record in records:
            if ps.hold_until is not None:
                break
            ps.tracker.add(record.offset)
            if ps.tracker.finished_earlier(record.offset):
                # A previous owner finished it above a slower record (its commit's offset map).
                ps.tracker.done(record.offset)
                continue
            job = self._job(ps, record, origin, on_ktasks_topic)
            if job is None or job.message is None:
                continue
            due = job.message.due
            # Only the middleware that decide about this task are asked (none: no Intake is built).
            if asks and not (due is not None and due > now) and middleware.deciders(job.task):
                decision = self._decide(job)
                if isinstance(decision, Defer):
                    if decision.until > now and self._defer(job, decision.until, now):
                        continue
                    due = decision.until
                elif decision is not None:
                    self._refuse(job, decision)
                    continue
            if due is not None and due > now:
                if self._wait(ps, job, due, now):
                    break
                continue
            if self.partitions.take_key(job):
                self._ready(job)
        self.partitions.update_pause(ps)

    def _decide(self, job: Job) -> Decision | None:
        assert job.message is not None
        r = job.record
        return self.app.middleware.decide(Intake(job.message, job.task, r.topic, r.partition, r.offset, r.key,
                                                 list(r.headers or []), job.origin_topic, job.replay))

    def _refuse(self, job: Job, decision: Skip | Reject) -> None:
        """A ``Skip`` or ``Reject``: the record never runs."""
        if isinstance(decision, Skip):
            self.outcomes.skipped(job, decision.outcome, decision.reason)
            return
        job.takes_key = False
        self.outcomes.report(job, "dead_lettered", started=False, reason=dead.REJECTED)
        self.outbox.dead_letter(job, dead.REJECTED, decision.exc_type, decision.message)

    # -- short deferrals, in memory ---------------------------------------------------
    def _defer(self, job: Job, until: float, now: float) -> bool:
        """Keep ``job`` in memory until ``until``; False when it is too far off, or its partition keeps enough."""
        ps = job.ps
        if until - now > DEFER_IN_MEMORY_S or self._deferred_by.get(ps, 0) >= self._defer_cap:
            return False
        self._deferred_by[ps] = self._deferred_by.get(ps, 0) + 1
        job.defer_until = until
        if self.partitions.take_key(job):
            heapq.heappush(self._deferred, (until, job.seq, job))
        # Otherwise it waits behind its key, in its place, and release() brings it back here.
        return True

    def release(self, job: Job) -> None:
        """``job``'s key is free for it: to the front of the ready queue, or back to the heap if deferred."""
        if job.defer_until is not None:
            heapq.heappush(self._deferred, (job.defer_until, job.seq, job))
        else:
            self._ready_first(job)

    def next_deferred_s(self, now: float) -> float | None:
        """Seconds until the soonest short deferral is due (None: there is none)."""
        return max(0.0, self._deferred[0][0] - now) if self._deferred else None

    def release_deferred(self, now: float) -> None:
        """Offer the deferred records whose time came to the intake middleware again."""
        while self._deferred and self._deferred[0][0] <= now:
            _, _, job = heapq.heappop(self._deferred)
            ps = job.ps
            self._deferred_by[ps] -= 1
            if not self._deferred_by[ps]:
                del self._deferred_by[ps]
            job.defer_until = None
            if not self.partitions.owns(job) or ps.revoking:
                continue
            decision = self._decide(job)
            if decision is None or (isinstance(decision, Defer) and decision.until <= now):
                self._ready(job)          # it holds its key already
                continue
            if isinstance(decision, Defer) and self._defer_again(job, decision.until, now):
                continue
            # It leaves the key: the next record of the key goes on.
            nxt = self.partitions.release_key(job)
            if nxt is not None:
                self.release(nxt)
            if isinstance(decision, Defer):
                tier_s = self.tier_s.get(ps.tp.topic)
                self.outbox.delay(job, decision.until, from_tier=tier_s is not None)
            else:
                job.takes_key = False
                self._refuse(job, decision)

    def _defer_again(self, job: Job, until: float, now: float) -> bool:
        ps = job.ps
        if until - now > DEFER_IN_MEMORY_S or self._deferred_by.get(ps, 0) >= self._defer_cap:
            return False
        self._deferred_by[ps] = self._deferred_by.get(ps, 0) + 1
        job.defer_until = until
        heapq.heappush(self._deferred, (until, job.seq, job))
        return True

    def forget(self, gone: set[TopicPartition]) -> None:
        """Drop the deferred records of ``gone`` partitions (their next owner takes them again)."""
        if not self._deferred:
            return
        self._deferred = [d for d in self._deferred if d[2].ps.tp not in gone]
        heapq.heapify(self._deferred)
        for ps in [ps for ps in self._deferred_by if ps.tp in gone]:
            del self._deferred_by[ps]

    @property
    def deferred(self) -> int:
        """Records waiting in memory for their deferral."""
        return sum(self._deferred_by.values())

    def _before_assignment(self, tp: TopicPartition, records: list[Any]) -> None:
        # Records for a partition the consumer owns but whose assignment callback we have
        # not seen yet (kafka-python can hand out buffered records around a rebalance).
        # They come from kafka-python's position, which may be past the committed offset
        # (an eager revoke and assign keeps the position fetched up to): starting there
        # would commit the records in between without running them. Start the partition
        # at its committed offset, as the callback would, and let these records come again.
        committed = self.committer.committed(tp)
        if committed is UNKNOWN:
            return
        self.committer.start_at(tp, committed)
        new = self.partitions.get(tp)
        assert new is not None
        self.partitions.sync_paused([new])
        logger.debug("records %d-%d of %s/%d before its assignment callback: starting it at the "
                     "committed offset %s instead", records[0].offset, records[-1].offset, tp.topic,
                     tp.partition, committed)

    def _job(self, ps: PartitionState, record: Any, origin: str, on_ktasks_topic: bool) -> Job | None:
        """The job of ``record``, or None when it was dead-lettered (undecodable, unregistered)."""
        self._seq += 1
        marks = trusted_marks(record.headers, on_ktasks_topic=on_ktasks_topic)
        job = Job(self._seq, ps, record, None, None, marks.origin_topic or origin, force=marks.force)
        try:
            job.message = decode(record.value)
        except DecodeError as exc:
            self._dead_letter_unrun(job, *dead.undecodable(exc))
            return None
        job.replay = marks.replay
        if job.replay and job.message.attempt:
            # A replay from the dead-letter topic gets a fresh retry budget.
            job.message = replace(job.message, attempt=0)
            job.value = encode(job.message)
        job.task = self.app.tasks.get(job.message.task)
        if job.task is None:
            self._dead_letter_unrun(job, *dead.unregistered(job.message.task, self.app.name))
            return None
        return job

    def _dead_letter_unrun(self, job: Job, reason: str, exc_type: str, exc_message: str) -> None:
        self.outcomes.report(job, "dead_lettered", started=False, reason=reason)
        self.outbox.dead_letter(job, reason, exc_type, exc_message)

    def _wait(self, ps: PartitionState, job: Job, due: float, now: float) -> bool:
        """Make ``job`` wait until ``due``; True when the partition is now held (take no more records)."""
        record = job.record
        tier_s = self.tier_s.get(ps.tp.topic)
        if tier_s is None or ps.capped_hold == record.offset:
            # A task topic is never paused for a future due time, and a tier holds a
            # record for at most its own delay: move it (again) to the delay tier of
            # what is left, behind the records due sooner. It finishes once Kafka has
            # the copy.
            ps.capped_hold = None
            self.outbox.delay(job, due, from_tier=tier_s is not None)
            return False
        # Not due yet: seek back to it and pause the partition until it is, or for
        # the tier's delay at most, so a record due later never holds the ones
        # behind it for longer. Waiting this way buffers nothing and leaves every
        # other partition running.
        until = min(due, now + tier_s)
        self.partitions.hold(ps, record.offset, until, capped=due > until)
        assert job.message is not None
        logger.info("holding %s/%d at offset %d until %s (task %s[%s] due %s%s)", ps.tp.topic, ps.tp.partition,
                    record.offset, clock(until), job.message.task, job.message.id, clock(due),
                    "; it moves on then" if ps.capped_hold is not None else "", extra=job.log_extra())
        return True
