"""The worker parent: owns the consumer, feeds the pool, commits what finished.

One thread runs the loop: poll (always, so the group never thinks we are
stuck, however long tasks run), hand ready records to idle children, collect
results, commit finished offsets in batches. Rebalance callbacks run on a
helper thread (see :mod:`.membership`) and share the loop's state under
``self._lock``.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from kafka import TopicPartition
from kafka.errors import CommitFailedError, KafkaError, RebalanceInProgressError
from kafka.structs import OffsetAndMetadata

from .. import faults
from ..deadletter import DeadLetter, check_size, is_too_large, without_value
from ..deadletter import publish as publish_dead_letter
from ..errors import DecodeError, KtasksError, TimeLimitExceeded, WorkerError, WorkerLost
from ..headers import H_LAST_ERROR, delay_headers, retry_headers, trusted_marks
from ..logs import task_extra
from ..message import Message, decode, encode
from ..middleware import Defer, Intake, Reject, Skip, TaskEvent
from ..readiness import wait_for_cluster
from . import offsetmap
from .child import DEAD, OK, POISON, RETRY, SKIP
from .membership import Listener, build_consumer
from .offsets import OffsetTracker
from .pool import ChildProc, Pool

logger = logging.getLogger(__name__)

__all__ = ["Worker", "EXIT_OK", "EXIT_COLD", "EXIT_ERROR", "EXIT_UNCOMMITTED"]

EXIT_OK = 0        # warm shutdown: everything finished was committed
EXIT_ERROR = 1     # could not start or failed
EXIT_COLD = 3      # cold shutdown: in-flight (or unpublished) records were left, and will be redelivered
EXIT_UNCOMMITTED = 4   # stopped, but finished records could not be committed: they will be delivered again

#: How often the worker checks that its topics still exist.
TOPIC_CHECK_S = 5.0

#: Longest a commit may block the loop (kafka-python's default is 30 s); then it is retried.
COMMIT_TIMEOUT_MS = 5000
#: Longest each of the final commits at shutdown may block (kafka-python's default is 30 s).
SHUTDOWN_COMMIT_TIMEOUT_MS = 5000

#: Tasks whose average run time is below this are batched to children; others go one at a time.
QUICK_TASK_S = 0.005

#: What :meth:`Worker._committed` returns when it gave up because the worker is stopping.
_UNKNOWN: Any = object()

#: A child's result status -> the outcome middleware sees (ktasks.middleware.OUTCOMES).
_OUTCOME = {OK: "succeeded", SKIP: "skipped", RETRY: "retried", DEAD: "failed", POISON: "dead_lettered"}


@dataclass(eq=False)
class PartitionState:
    """What the worker knows of one assigned partition, for one assignment (its epoch)."""

    tp: TopicPartition
    epoch: int
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    keys: dict[bytes, deque[Job]] = field(default_factory=dict)   # key -> jobs waiting behind the running one
    finished: dict[int, Job] = field(default_factory=dict)        # finished, not yet committed
    hold_until: float | None = None    # a delay-tier record not yet due: partition paused until then
    capped_hold: int | None = None     # offset held for the tier's delay only: moved on if still not due
    paused: bool = False
    revoking: bool = False


@dataclass(eq=False)
class Job:
    seq: int
    ps: PartitionState
    record: Any                       # kafka ConsumerRecord
    message: Message | None
    task: Any                         # Task or None for records that never reach a child
    origin_topic: str
    force: bool = False
    value: bytes | None = None        # what the child gets, when it differs from the record's value
    replay: bool = False              # replayed from the dead-letter topic
    takes_key: bool = True            # went through the ready queue (holds its key while running)

    @property
    def offset(self) -> int:
        return int(self.record.offset)

    def log_extra(self) -> dict[str, Any]:
        """``extra=`` for log lines about this job (task fields in text and JSON logs)."""
        m = self.message
        return task_extra(m.task if m else "?", m.id if m else "?", self.record.topic, self.record.partition,
                          self.record.offset)


@dataclass(eq=False)
class PendingPublish:
    """A retry or dead-letter record on its way; its job finishes when the broker has it."""

    job: Job
    kind: str
    send: Any                         # callable returning a future; called again after a failure
    future: Any = None
    failures: int = 0
    next_try: float = 0.0
    # What to send instead when the broker rejects the copy as too large for good: a smaller
    # copy first, last a dead letter without the value. (description, send)
    smaller: list[tuple[str, Any]] = field(default_factory=list)


@dataclass
class Stats:
    succeeded: int = 0
    skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    lost: int = 0
    committed: int = 0                # finished records whose offsets were committed
    started_at: float = field(default_factory=time.monotonic)


def _clock(epoch_s: float) -> str:
    """A wall-clock time for log lines: ``2026-12-04 15:02:03 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


class Worker:
    """Runs an app's tasks from Kafka. ``run()`` blocks until stopped and returns the exit code."""

    def __init__(self, app: Any, app_spec: str, *, concurrency: int | None = None,
                 topics: Iterable[str] | None = None, group_id: str | None = None,
                 loglevel: str = "INFO", log_format: str = "text", burst: bool = False,
                 overrides: dict[str, Any] | None = None) -> None:
        self.app = app
        self.overrides = dict(overrides or {})
        if group_id:
            self.overrides["group_id"] = group_id
        if concurrency:
            self.overrides["concurrency"] = concurrency
        self.settings = app.settings.replace(**self.overrides) if self.overrides else app.settings
        self.app_spec = app_spec
        self.group_id: str = self.settings.group_id or app.name
        self.concurrency = self.settings.concurrency or os.cpu_count() or 1
        self.topics = list(topics) if topics else app.task_topics()
        self.burst = burst
        self.host = socket.gethostname()
        self._retry_topics = {rt: t for t in self.topics for rt in app.retry_topics(t)}
        # Delay of each delay-tier topic, in seconds: the longest it may hold its partition.
        self._tier_s = {app.retry_topic(t, ms): ms / 1000.0 for t in self.topics
                        for ms in app.settings.retry_tiers_ms}
        # With async def tasks every child runs an event loop with async_concurrency slots (see .aio).
        capacity = self.settings.async_concurrency if any(t.is_async for t in app.tasks.values()) else 1
        self.pool = Pool(app_spec, self.concurrency, loglevel=loglevel, log_format=log_format,
                         faults_spec=self.settings.faults, overrides=self.overrides, capacity=capacity)
        self.consumer: Any = None
        self.partitions: dict[TopicPartition, PartitionState] = {}
        self.ready: deque[Job] = deque()
        self.publishing: list[PendingPublish] = []
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stop = False
        self._cold = False
        self._seq = 0
        self._epoch = 0
        self._in_flight = 0
        self._durations: dict[str, float] = {}    # task name -> moving average of its run time
        self._next_commit = 0.0
        self._commit_failing_since: float | None = None
        self._commit_failures = 0
        self._idle_polls = 0
        self._offset_maps: dict[TopicPartition, str] = {}    # commit metadata read with the offset
        self._published_end: dict[TopicPartition, int] = {}
        self._next_topic_check = 0.0
        self._exit_code: int | None = None      # set when the worker stops itself on an error
        self._pid = os.getpid()
        faults.configure(self.settings.faults)

    # -- lifecycle ------------------------------------------------------------
    def request_stop(self, cold: bool = False) -> None:
        """Ask for a warm shutdown; ``cold=True`` (or a second call) stops at once."""
        if self._stop or cold:
            self._cold = True
        self._stop = True

    def run(self) -> int:
        all_topics = self.topics + list(self._retry_topics)
        logger.info("worker for app %s: group %s, %d children, topics %s", self.app.name, self.group_id,
                    self.concurrency, ", ".join(self.topics))
        if not wait_for_cluster(self.settings, self.app.client_id, lambda: self._stop):
            return EXIT_OK  # stopped while waiting: nothing was consumed
        self.app.ensure_topics(all_topics + [self.app.dead_letter_topic(t) for t in self.topics])
        ledger_path = None
        if self.settings.ledger_enabled:
            from ..ledger import Ledger, Pruner, check_ledger

            # The worker's own settings (CLI flags) decide where. Checked here, once: a corrupt
            # or read-only file would otherwise fail every child, replaced again and again.
            ledger_path = self.settings.ledger_path or Ledger.default_path(self.group_id)
            check_ledger(ledger_path)
        self.pool.start()
        self.stats = Stats()
        pruner = None
        if ledger_path is not None:
            pruner = Pruner(ledger_path, self.settings.ledger_retention_s)  # old entries go in the background
            pruner.start()
        self.consumer = build_consumer(self.settings, self.group_id, self.app.client_id)
        self.consumer.subscribe(all_topics, listener=Listener(self._on_assigned, self._on_revoked,
                                                              self._on_lost))
        self._await_metadata(all_topics)
        self.app.middleware.before("worker_started", self)
        logger.info("ready: %d children up, joining group %s", len(self.pool.children), self.group_id)
        try:
            while not self._stop:
                self._iterate()
                if self.burst and self._drained():
                    logger.info("burst: backlog drained, stopping")
                    self._stop = True
            code = self._shutdown()
            if self._exit_code is not None:
                code = self._exit_code
        except BaseException:
            logger.exception("worker failed; killing children")
            self.pool.terminate()
            raise
        finally:
            if pruner is not None:
                pruner.stop(timeout=10.0)
        self.app.middleware.after("worker_stopped", self)
        return code

    def _await_metadata(self, topics: list[str]) -> None:
        # kafka-python can lose the metadata update that subscribe() asks for: when a refresh
        # is already in flight (the client's first one, right after bootstrap), its response,
        # which lacks our topics, clears the "update needed" flag (see the TODO in
        # kafka.cluster.ClusterMetadata.set_topics). The first assignment is then empty and
        # nothing asks for metadata again for metadata_max_age_ms (5 minutes): the worker sits
        # in the group with no partitions. Fetching our topics' partitions here, before the
        # first poll joins the group, waits out any in-flight refresh and loads them.
        for topic in topics:
            self.consumer.partitions_for_topic(topic)

    def _iterate(self) -> None:
        busy = bool(self._in_flight or self.ready or self.publishing)
        records = self.consumer.poll(timeout_ms=0 if busy else self.settings.poll_timeout_ms)
        with self._lock:
            self._release_holds()
            if records or busy:
                self._idle_polls = 0
                for tp, recs in records.items():
                    self._accept(tp, recs)
            else:
                self._idle_polls += 1
            self._dispatch()
            self._collect(0.02 if self._in_flight else 0.0)
            self._dispatch()
            self._check_time_limits()
            self._pump_publishes()
            self._maybe_commit()
            if not self._stop:
                self.pool.refill()     # children replaced during a rebalance callback start here
                self._check_topics()

    def _check_topics(self) -> None:
        """Notice a deleted task or retry topic: recreate it, or stop with an error naming it.

        Without this, kafka-python only logs that the topic is unknown, about twice a
        second, forever; the worker neither recovers nor exits.
        """
        now = time.monotonic()
        if now < self._next_topic_check:
            return
        self._next_topic_check = now + TOPIC_CHECK_S
        subscribed = self.topics + list(self._retry_topics)
        # Answered from the consumer's metadata; a topic missing there is fetched again once.
        missing = [t for t in subscribed if not self.consumer.partitions_for_topic(t)]
        if not missing:
            return
        # Forget their partitions first: committing our old offsets into a recreated topic
        # would skip its first records.
        self._drop([tp for tp in self.partitions if tp.topic in missing])
        if self.settings.auto_create_topics:
            logger.warning("topic(s) %s no longer exist (deleted?): recreating them (auto_create_topics is on)",
                           ", ".join(missing))
            try:
                self.app.forget_topics(missing)
                self.app.ensure_topics(missing)
            except KtasksError as exc:
                logger.error("recreating %s failed: %s; trying again in %.0fs", ", ".join(missing), exc,
                             TOPIC_CHECK_S)
            return
        logger.error("topic(s) %s no longer exist (deleted?) and auto_create_topics is off: stopping. Create "
                     "them (ktasks topics create) and start the worker again", ", ".join(missing))
        self._exit_code = EXIT_ERROR
        self._stop = True

    def _drained(self) -> bool:
        if self._in_flight or self.ready or self.publishing or self._idle_polls < 3:
            return False
        if not self.partitions:
            return False
        # The end offsets the last fetch responses carried (highwater), not end_offsets(): that
        # is a ListOffsets round trip per idle iteration, and in kafka-python 3.0.12 it can
        # block forever despite its timeout (seen with partitions being paused and resumed:
        # the worker sat in it for minutes mid-backlog; a bare consumer reproduces it).
        # The highwater is only as fresh as the last fetch response, so a retry we just
        # published may be missing from it: our own acknowledged publishes count too.
        for tp, ps in list(self.partitions.items()):
            end = self.consumer.highwater(tp)
            if end is None or ps.tracker.in_flight:
                return False
            if self.consumer.position(tp) < max(end, self._published_end.get(tp, 0)):
                return False
        return True

    # -- intake ---------------------------------------------------------------
    def _accept(self, tp: TopicPartition, records: list[Any]) -> None:
        ps = self.partitions.get(tp)
        if ps is None and tp in self.consumer.assignment():
            # Records for a partition the consumer owns but whose assignment callback we have
            # not seen yet (kafka-python can hand out buffered records around a rebalance).
            # They come from kafka-python's position, which may be past the committed offset
            # (an eager revoke and assign keeps the position fetched up to): starting there
            # would commit the records in between without running them. Start the partition
            # at its committed offset, as the callback would, and let these records come again.
            committed = self._committed(tp)
            if committed is not _UNKNOWN:
                self._epoch += 1
                self._start_at(tp, committed)
                new = self.partitions[tp]
                new.paused = tp in set(self.consumer.paused())
                self._update_pause(new)
                logger.debug("records %d-%d of %s/%d before its assignment callback: starting it at the "
                             "committed offset %s instead", records[0].offset, records[-1].offset, tp.topic,
                             tp.partition, committed)
            return
        if ps is None or ps.revoking:
            logger.debug("dropping %d records of %s/%d: partition %s", len(records), tp.topic, tp.partition,
                         "not ours" if ps is None else "being revoked")
            return
        now = time.time()
        origin = self._retry_topics.get(tp.topic, tp.topic)
        for record in records:
            if ps.hold_until is not None:
                break
            ps.tracker.add(record.offset)
            if ps.tracker.finished_earlier(record.offset):
                # A previous owner finished it above a slower record (its commit's offset map).
                ps.tracker.done(record.offset)
                continue
            self._seq += 1
            marks = trusted_marks(record.headers, on_ktasks_topic=tp.topic in self._retry_topics)
            job = Job(self._seq, ps, record, None, None, marks.origin_topic or origin, force=marks.force)
            try:
                job.message = decode(record.value)
            except DecodeError as exc:
                self._dead_letter(job, "undecodable", "ktasks.errors.DecodeError", str(exc))
                continue
            job.replay = marks.replay
            if job.replay and job.message.attempt:
                # A replay from the dead-letter topic gets a fresh retry budget.
                job.message = replace(job.message, attempt=0)
                job.value = encode(job.message)
            job.task = self.app.tasks.get(job.message.task)
            if job.task is None:
                self._dead_letter(job, "unregistered", "ktasks.errors.TaskNotRegistered",
                                  f"task {job.message.task!r} is not registered with app {self.app.name!r}")
                continue
            due = job.message.due
            if len(self.app.middleware) and not (due is not None and due > now):
                decision = self.app.middleware.decide(Intake(
                    job.message, job.task, record.topic, record.partition, record.offset, record.key,
                    list(record.headers or []), job.origin_topic, job.replay))
                if isinstance(decision, Skip):
                    logger.info("task %s[%s] not run: %s%s", job.message.task, job.message.id, decision.outcome,
                                f" ({decision.reason})" if decision.reason else "", extra=job.log_extra())
                    job.takes_key = False
                    self.stats.skipped += 1
                    self._report_finished(job, decision.outcome, started=False, reason=decision.reason)
                    self._complete(job)
                    continue
                if isinstance(decision, Reject):
                    job.takes_key = False
                    self._report_finished(job, "dead_lettered", started=False, reason="rejected")
                    self._dead_letter(job, "rejected", decision.exc_type, decision.message)
                    continue
                if isinstance(decision, Defer):
                    due = decision.until
            if due is not None and due > now:
                tier_s = self._tier_s.get(tp.topic)
                if tier_s is None or ps.capped_hold == record.offset:
                    # A task topic is never paused for a future due time, and a tier holds a
                    # record for at most its own delay: move it (again) to the delay tier of
                    # what is left, behind the records due sooner. It finishes once Kafka has
                    # the copy.
                    ps.capped_hold = None
                    self._delay(job, due, from_tier=tier_s is not None)
                    continue
                # Not due yet: seek back to it and pause the partition until it is, or for
                # the tier's delay at most, so a record due later never holds the ones
                # behind it for longer. Waiting this way buffers nothing and leaves every
                # other partition running.
                ps.tracker.rewind(record.offset)
                self.consumer.seek(tp, record.offset)
                ps.hold_until = min(due, now + tier_s)
                ps.capped_hold = record.offset if due > ps.hold_until else None
                logger.info("holding %s/%d at offset %d until %s (task %s[%s] due %s%s)", tp.topic, tp.partition,
                            record.offset, _clock(ps.hold_until), job.message.task, job.message.id, _clock(due),
                            "; it moves on then" if ps.capped_hold is not None else "", extra=job.log_extra())
                self._update_pause(ps)
                break
            key = record.key
            if key is not None:
                waiting = ps.keys.get(key)
                if waiting is not None:
                    waiting.append(job)       # same key is running: strictly after it
                    continue
                ps.keys[key] = deque()
            self.ready.append(job)
        self._update_pause(ps)

    def _release_holds(self) -> None:
        now = time.time()
        for ps in self.partitions.values():
            if ps.hold_until is not None and ps.hold_until <= now:
                ps.hold_until = None
                self._update_pause(ps)

    def _update_pause(self, ps: PartitionState) -> None:
        backlog = ps.tracker.in_flight
        limit = self.settings.prefetch_per_partition
        want = ps.hold_until is not None or backlog >= limit or (ps.paused and backlog > limit // 2)
        if want and not ps.paused:
            self.consumer.pause(ps.tp)
            ps.paused = True
            logger.debug("paused %s/%d (%d in flight, hold until %s)", ps.tp.topic, ps.tp.partition, backlog,
                         ps.hold_until)
        elif not want and ps.paused:
            self.consumer.resume(ps.tp)
            ps.paused = False
            logger.debug("resumed %s/%d (%d in flight)", ps.tp.topic, ps.tp.partition, backlog)

    # -- dispatch -------------------------------------------------------------
    def _dispatch(self) -> None:
        if not self.ready:
            return
        idle = self.pool.idle()
        if not idle:
            return
        # Quick tasks go to a child in batches (fewer pipe round trips); a task not known to
        # be quick goes alone, so nothing waits behind it in a busy child while others idle.
        size = max(1, min(self.settings.max_batch, math.ceil(len(self.ready) / len(self.pool.children))))
        limit = self.settings.max_tasks_per_child
        for child in idle:
            # A batch never takes a child past max_tasks_per_child: it is retired only once idle.
            take = max(1, min(size, limit - child.tasks_done)) if limit else size
            if child.capacity > 1:  # an event-loop child: fill its free slots, each job runs on its own
                take = min(take, child.capacity - len(child.outstanding))
            jobs: list[Job] = []
            while self.ready and len(jobs) < take:
                job = self.ready[0]
                if self.partitions.get(job.ps.tp) is not job.ps or job.ps.revoking:
                    self.ready.popleft()
                    continue
                quick = child.capacity > 1 or self._durations.get(job.task.name, QUICK_TASK_S) < QUICK_TASK_S
                if jobs and not quick:
                    break
                jobs.append(self.ready.popleft())
                if not quick:
                    break
            if not jobs:
                return
            payload = [[j.seq, j.value or j.record.value, j.record.topic, j.record.partition, j.offset, j.force,
                        j.task.options.soft_time_limit_s, j.replay] for j in jobs]
            self.pool.dispatch(child, jobs, payload)
            self._in_flight += len(jobs)
            if not self.ready:
                return

    # -- results --------------------------------------------------------------
    def _collect(self, timeout_s: float) -> None:
        for event in self.pool.poll(timeout_s):
            child = event.child
            if event.kind == "results":
                for res in event.results:
                    job = child.outstanding.pop(res[0], None)
                    if job is None:
                        continue
                    self._in_flight -= 1
                    child.tasks_done += 1
                    self._finish(job, res)
                limit = self.settings.max_tasks_per_child
                if limit and not child.outstanding and child.tasks_done >= limit and not self._stop:
                    logger.info("child %d ran %d tasks (max_tasks_per_child): replacing it",
                                child.index, child.tasks_done)
                    self.pool.retire(child)
            else:
                self._child_died(child, event.exitcode)

    def _finish(self, job: Job, res: list[Any]) -> None:
        status, duration = res[1], res[2]
        if self._fenced(job, f"result {status!r}"):
            return
        outcome = "expired" if status in (SKIP, DEAD) and res[3] == "expired" else _OUTCOME.get(status, status)
        self._report_finished(job, outcome, duration if outcome in ("succeeded", "retried", "failed") else None,
                              reason=res[3] if status == DEAD else "poison" if status == POISON else None)
        if status == OK and job.task is not None:
            name = job.task.name
            avg = self._durations.get(name)
            self._durations[name] = duration if avg is None else 0.8 * avg + 0.2 * duration
        if status == OK:
            self.stats.succeeded += 1
            self._complete(job)
        elif status == SKIP:
            self.stats.skipped += 1
            self._complete(job)
        elif status == RETRY:
            self._retry(job, float(res[3]), res[4], res[5])
        elif status == DEAD:
            self._dead_letter(job, res[3], res[4], res[5], res[6])
        elif status == POISON:
            self._dead_letter(job, "poison", res[4], res[5], res[6])
        else:
            raise WorkerError(f"unknown result status {status!r} from a child")

    def _child_died(self, child: ChildProc, exitcode: int | None) -> None:
        jobs = list(child.outstanding.values())
        child.outstanding.clear()
        self._in_flight -= len(jobs)
        running = child.running()
        if child.retiring and not jobs:
            logger.debug("child %d retired", child.index)
        else:
            how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
            logger.error("child %d (pid %s) died (%s) with %d task(s) assigned", child.index, child.pid, how,
                         len(jobs))
        lost_seq = running[0] if running is not None else None
        requeue: list[Job] = []
        for job in jobs:
            if self.partitions.get(job.ps.tp) is not job.ps:
                continue          # a revoked epoch's record: its new owner runs it
            if job.seq == lost_seq:
                killed_for_limit = child.kill_reason == "time-limit"
                exc = (TimeLimitExceeded(f"ran past time_limit_s={job.task.options.time_limit_s}")
                       if killed_for_limit else WorkerLost(f"child process died ({how})"))
                self.stats.lost += 1
                assert running is not None
                self._failed_in_parent(job, exc, "time-limit" if killed_for_limit else "worker-lost",
                                       time.monotonic() - running[1])
            else:
                requeue.append(job)
        # Jobs the child had not started (or had finished without reporting) run again;
        # the ledger skips any that did finish.
        self.ready.extendleft(reversed(requeue))
        if not self._stop:
            self.pool.replace(child)
        else:
            self.pool.remove(child)

    def _failed_in_parent(self, job: Job, exc: BaseException, reason: str, run_time_s: float) -> None:
        assert job.message is not None
        exc_type = f"{type(exc).__module__}.{type(exc).__qualname__}"
        retry = job.task.should_retry(exc, job.message.attempt)
        self._report_finished(job, "retried" if retry else "failed", run_time_s, reason=None if retry else reason)
        if retry:
            delay = job.task.backoff_s(job.message.attempt)
            logger.warning("task %s[%s]: %s; retry %d/%d in %.1fs", job.message.task, job.message.id, exc,
                           job.message.attempt + 1, job.task.max_retries(), delay, extra=job.log_extra())
            self._retry(job, delay, exc_type, str(exc))
        else:
            logger.error("task %s[%s]: %s; sending to the dead-letter topic", job.message.task,
                         job.message.id, exc, extra=job.log_extra())
            self._dead_letter(job, reason, exc_type, str(exc))

    def _report_finished(self, job: Job, outcome: str, run_time_s: float | None = None, *, started: bool = True,
                         reason: str | None = None) -> None:
        """Tell middleware (metrics, reports) what became of a record; see ktasks.middleware.TaskEvent."""
        if len(self.app.middleware):
            name = job.task.name if job.task is not None else \
                "(undecodable)" if job.message is None else "(unregistered)"
            self.app.middleware.after("task_finished", TaskEvent.of(
                job.message, name, outcome, job.record, run_time_s=run_time_s, started=started, reason=reason))

    def _check_time_limits(self) -> None:
        now = time.monotonic()
        for child in list(self.pool.children):
            running = child.running()
            if running is None or child.kill_reason:
                continue
            job = child.outstanding.get(running[0])
            limit = job.task.options.time_limit_s if job is not None else None
            if job is not None and limit and now - running[1] > limit:
                logger.error("task %s[%s] ran past its time limit (%.1fs): killing child %d",
                             job.message.task if job.message else "?", job.message.id if job.message else "?",
                             limit, child.index, extra=job.log_extra())
                child.kill_reason = "time-limit"
                self.pool.kill(child)

    def _complete(self, job: Job) -> None:
        ps = job.ps
        if self.partitions.get(ps.tp) is not ps:
            # The partition was revoked (or lost) since this record was taken: its new owner
            # decides about it; committing here could move someone else's offset.
            logger.debug("completion of %s@%d after its partition moved: not committed", ps.tp, job.offset)
            return
        ps.tracker.done(job.offset)
        ps.finished[job.offset] = job
        key = job.record.key
        if key is not None:
            waiting = ps.keys.get(key)
            if waiting is not None and job.task is not None and self._holds_key(job):
                if waiting:
                    self.ready.appendleft(waiting.popleft())
                else:
                    del ps.keys[key]
        self._update_pause(ps)

    @staticmethod
    def _holds_key(job: Job) -> bool:
        # Only records that went through the ready queue hold their key; dead-lettered
        # undecodable or unregistered records, and records moved to a delay tier, never took it.
        return job.takes_key and job.message is not None and job.task is not None

    # -- retries and dead letters ----------------------------------------------
    def _retry(self, job: Job, delay_s: float, exc_type: str | None, exc_message: str | None) -> None:
        assert job.message is not None
        message = replace(job.message, attempt=job.message.attempt + 1, due=time.time() + delay_s)
        topic = self.app.retry_topic(job.origin_topic, self.app.delay_tier_ms(delay_s))
        headers = retry_headers(job.record.headers, job.origin_topic, f"{exc_type}: {exc_message}")
        value = encode(message)

        def send() -> Any:
            faults.point("retry_publish")
            return self._send_checked(topic, value, job.record.key, headers)

        def send_without_error() -> Any:
            return self._send_checked(topic, value, job.record.key, [h for h in headers if h[0] != H_LAST_ERROR])

        self.stats.retried += 1
        self.app.middleware.after("on_retry", message, delay_s, None)
        self._publish(PendingPublish(job, "retry", send, smaller=[
            ("the retry copy without its ktasks-last-error header", send_without_error),
            self._too_large_dead_letter(job, "retry", exc_type, exc_message)]))

    def _delay(self, job: Job, due: float, from_tier: bool) -> None:
        """Publish ``job``'s record, unchanged, to the delay tier of the time left until ``due``."""
        job.takes_key = False
        left_s = max(0.0, due - time.time())
        topic = self.app.retry_topic(job.origin_topic, self.app.delay_tier_ms(left_s))
        headers = delay_headers(job.record.headers, job.origin_topic, from_tier)
        value = job.value or job.record.value
        logger.info("task %s[%s] due %s: moved to %s", job.message.task if job.message else "?",
                    job.message.id if job.message else "?", _clock(due), topic, extra=job.log_extra())

        def send() -> Any:
            return self._send_checked(topic, value, job.record.key, headers)

        self._publish(PendingPublish(job, "delay", send,
                                     smaller=[self._too_large_dead_letter(job, "delay", None, None)]))

    def _send_checked(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        # A record the broker rejects as too large puts kafka-python's idempotent producer in
        # a fatal state (every later send fails): check the topic's limit first.
        check_size(self.app, topic, value, key, headers)
        return self.app.send_raw(topic, value, key=key, headers=headers)

    def _too_large_dead_letter(self, job: Job, kind: str, exc_type: str | None, exc_message: str | None
                               ) -> tuple[str, Any]:
        """The last resort for a copy too large for the broker: a dead letter without the value."""
        dl = without_value(self._dead_letter_of(job, "too-large", exc_type, exc_message, None),
                           f"the {kind} copy was rejected by the broker as too large")

        def send() -> Any:
            return publish_dead_letter(self.app, dl)

        return "a dead letter without the value (reason too-large)", send

    def _dead_letter_of(self, job: Job, reason: str, exc_type: str | None, exc_message: str | None,
                        stacktrace: str | None) -> DeadLetter:
        r = job.record
        return DeadLetter(
            value=r.value, key=r.key, headers=list(r.headers or []), topic=r.topic, partition=r.partition,
            offset=r.offset, timestamp_ms=r.timestamp, timestamp_type=r.timestamp_type,
            origin_topic=job.origin_topic, reason=reason,
            exc_type=exc_type, exc_message=exc_message, stacktrace=stacktrace,
            attempts=(job.message.attempt + 1) if job.message else 0, group=self.group_id, host=self.host,
        )

    def _dead_letter(self, job: Job, reason: str, exc_type: str | None = None, exc_message: str | None = None,
                     stacktrace: str | None = None) -> None:
        if job.task is None:    # undecodable or unregistered: it never reached a child
            self._report_finished(job, "dead_lettered", started=False, reason=reason)
        dl = self._dead_letter_of(job, reason, exc_type, exc_message, stacktrace)

        def send() -> Any:
            faults.point("dead_letter_publish")
            return publish_dead_letter(self.app, dl)

        small = without_value(dl, "the dead letter was rejected by the broker as too large")

        def send_small() -> Any:
            return publish_dead_letter(self.app, small)

        self.stats.dead_lettered += 1
        self.app.middleware.after("on_dead_letter", job.message, reason)
        self._publish(PendingPublish(job, "dead-letter", send,
                                     smaller=[("the dead letter without its value", send_small)]))

    def _fenced(self, job: Job, what: str) -> bool:
        """True (and nothing is done) when ``job`` belongs to an assignment epoch we no longer own.

        Its partition was revoked or lost since the record was taken: the new owner runs the
        record again, so a completion, retry or dead-letter copy from this epoch would run
        it twice (or move someone else's offset). A revoking partition still owns its jobs.
        """
        if self.partitions.get(job.ps.tp) is job.ps:
            return False
        logger.info("%s of %s@%d dropped: its partition was revoked since the record was taken "
                    "(epoch %d); its new owner decides", what, job.record.topic, job.offset, job.ps.epoch,
                    extra=job.log_extra())
        return True

    def _publish(self, pending: PendingPublish) -> None:
        if self._fenced(pending.job, f"{pending.kind} publish"):
            return
        self.publishing.append(pending)
        self._try_send(pending)

    def _try_send(self, pending: PendingPublish) -> None:
        try:
            pending.future = pending.send()
        except Exception as exc:
            self._publish_failed(pending, exc)

    def _publish_failed(self, pending: PendingPublish, exc: BaseException) -> None:
        pending.future = None
        if is_too_large(exc):
            self._replace_failed_producer()
        if is_too_large(exc) and pending.smaller:
            # Sending the same copy again would fail the same way, forever, and hold the
            # partition's committed offset: send something smaller instead, at once.
            what, pending.send = pending.smaller.pop(0)
            logger.warning("%s record for %s@%d rejected as too large (%s: %s); sending %s instead",
                           pending.kind, pending.job.record.topic, pending.job.offset, type(exc).__name__, exc,
                           what, extra=pending.job.log_extra())
            self._try_send(pending)
            return
        pending.failures += 1
        backoff = min(30.0, 0.2 * 2 ** min(pending.failures, 8))
        pending.next_try = time.monotonic() + backoff
        logger.error("publishing %s record for %s@%d failed (%s: %s); its offset stays uncommitted, "
                     "trying again in %.1fs", pending.kind, pending.job.record.topic, pending.job.offset,
                     type(exc).__name__, exc, backoff, extra=pending.job.log_extra())

    def _replace_failed_producer(self) -> None:
        # kafka-python 3.0.12's idempotent producer takes a broker's "too large" answer as a
        # fatal error and fails every record sent afterwards: replace it. The records it still
        # held fail, and their publishes are tried again like any failed publish.
        producer = self.app.producer.get()
        manager = getattr(producer, "_transaction_manager", None)
        if manager is None or not manager.has_fatal_error():
            return
        logger.warning("the producer is in a fatal state after a record too large for the broker; replacing it")
        try:
            self.app.producer.close(0.0)
        except Exception as exc:  # a fatal producer may fail its last flush: it is closed anyway
            logger.debug("closing the failed producer: %s", exc)

    def _pump_publishes(self) -> None:
        if not self.publishing:
            return
        now = time.monotonic()
        still: list[PendingPublish] = []
        for p in self.publishing:
            if self.partitions.get(p.job.ps.tp) is not p.job.ps:
                continue    # partition moved: not ours to finish
            if p.future is None:
                if now >= p.next_try:
                    self._try_send(p)
                still.append(p)
            elif p.future.is_done:
                if p.future.succeeded():
                    md = p.future.value
                    tp = TopicPartition(md.topic, md.partition)
                    self._published_end[tp] = max(self._published_end.get(tp, 0), md.offset + 1)
                    self._complete(p.job)
                else:
                    self._publish_failed(p, p.future.exception)
                    still.append(p)
            else:
                still.append(p)
        self.publishing = still

    # -- commits --------------------------------------------------------------
    def _maybe_commit(self, force: bool = False, only: Iterable[TopicPartition] | None = None,
                      timeout_ms: int | None = None) -> bool:
        """Commit finished offsets; returns False when a retriable error left something uncommitted."""
        now = time.monotonic()
        if not force and now < self._next_commit:
            return True
        self._next_commit = now + self.settings.commit_interval_ms / 1000.0
        targets = [self.partitions[tp] for tp in (only if only is not None else list(self.partitions))
                   if tp in self.partitions]
        offsets = {ps.tp: OffsetAndMetadata(ps.tracker.committable, ps.tracker.offset_map(), -1)
                   for ps in targets if ps.tracker.needs_commit()}
        if not offsets:
            return True
        try:
            faults.point("before_commit", self._pid)
            faults.point("commit", self._pid)
            # Bounded: kafka-python retries a retriable error (a deleted topic's partition, a
            # moving coordinator) for 30 s by default, with the whole loop stopped.
            self.consumer.commit(offsets, timeout_ms=timeout_ms or COMMIT_TIMEOUT_MS)
        except (CommitFailedError, RebalanceInProgressError) as exc:
            self.app.middleware.after("commit_failed", exc)
            # Not fatal: a rebalance is under way. Its revoke callback commits what finished
            # before the partitions move; otherwise the next commit interval tries again.
            logger.warning("commit rejected (%s): the group is rebalancing and these partitions may move; "
                           "finished tasks are in the ledger, so their next owner will not run them again",
                           exc)
            return False
        except (KafkaError, faults.FaultInjected) as exc:
            self.app.middleware.after("commit_failed", exc)
            return self._commit_error(exc, now)
        self.app.middleware.after("offsets_committed", {tp: om.offset for tp, om in offsets.items()})
        for tp, om in offsets.items():
            ps = self.partitions.get(tp)
            if ps is not None:
                ps.tracker.mark_committed(om.offset, om.metadata)
                for offset in [o for o in ps.finished if o < om.offset]:
                    del ps.finished[offset]
                    self.stats.committed += 1
        if self._commit_failing_since is not None:
            logger.info("offset commit succeeded again after %d failures", self._commit_failures)
        self._commit_failing_since = None
        self._commit_failures = 0
        faults.point("after_commit", self._pid)
        return True

    def _commit_error(self, exc: BaseException, now: float) -> bool:
        retriable = bool(getattr(exc, "retriable", False))
        self._commit_failures += 1
        if not self._stop:
            self._check_topics()      # a deleted topic makes commits fail: say so, recreate it
        if self._commit_failing_since is None:
            self._commit_failing_since = now
        failing_for = now - self._commit_failing_since
        deadline = self.settings.commit_retry_deadline_ms / 1000.0
        if self._stop:
            # Shutting down: no report-and-restart now. What stays uncommitted is counted in
            # the exit status and the last log line.
            logger.warning("offset commit failed while stopping (%s: %s)", type(exc).__name__, exc)
            return False
        if retriable and failing_for < deadline:
            backoff = min(5.0, 0.05 * 2 ** min(self._commit_failures, 7))
            self._next_commit = now + backoff
            logger.warning("offset commit failed (%s: %s), retriable; retry %d in %.2fs", type(exc).__name__,
                           exc, self._commit_failures, backoff)
            return False
        logger.error("offset commit failed for %.1fs (%s: %s): reporting finished records as commit-failed "
                     "and restarting from the committed offsets", failing_for, type(exc).__name__, exc)
        self._report_commit_failed()
        return False

    def _report_commit_failed(self) -> None:
        for ps in list(self.partitions.values()):
            for job in sorted(ps.finished.values(), key=lambda j: j.offset):
                if job.offset < (ps.tracker.committed or 0):
                    continue
                r = job.record
                dl = DeadLetter(
                    value=r.value, key=r.key, headers=list(r.headers or []), topic=r.topic,
                    partition=r.partition, offset=r.offset, timestamp_ms=r.timestamp,
                    timestamp_type=r.timestamp_type,
                    origin_topic=job.origin_topic, reason="commit-failed",
                    exc_type="ktasks.errors.CommitError",
                    exc_message="the task finished but its offset could not be committed",
                    attempts=(job.message.attempt + 1) if job.message else 0, group=self.group_id,
                    host=self.host)
                try:
                    publish_dead_letter(self.app, dl)
                except Exception:
                    logger.exception("could not report commit-failed record %s@%d", r.topic, r.offset)
            ps.finished.clear()
        if not self._flush_quietly(10.0):
            logger.error("some commit-failed reports are still unsent after 10s")
        self._commit_failing_since = None
        self._commit_failures = 0
        self._reset_to_committed()

    def _reset_to_committed(self) -> None:
        """Start every owned partition again from its committed offset, as a new owner would.

        Everything taken since is forgotten (a new epoch: late completions are not
        committed) and delivered again; the ledger keeps finished tasks from running
        twice. This stands in for leaving and rejoining the group, which with
        kafka-python 3.0's sticky assignors can leave partitions unassigned for minutes.
        """
        tps = list(self.partitions)
        self._drop(tps)
        for tp in tps:
            self._epoch += 1
            committed = self._committed(tp)
            if committed is _UNKNOWN:
                continue          # stopping: leave it unstarted
            self._start_at(tp, committed)
            self.consumer.resume(tp)
            logger.info("restarting %s/%d from committed offset %s", tp.topic, tp.partition, committed)

    # -- rebalance (called on the rebalance helper thread) -----------------------
    def _on_assigned(self, tps: list[TopicPartition]) -> None:
        # Start every newly assigned partition from its committed offset, explicitly. After an
        # eager revoke-and-assign of the same partition, kafka-python 3.0.12 keeps the position
        # the consumer had fetched up to, so records we had taken but not finished (dropped on
        # revoke, uncommitted) would be skipped until a restart.
        positions = {tp: self._committed(tp) for tp in tps}
        with self._lock:
            for tp in tps:
                current = self.partitions.get(tp)
                if positions[tp] is _UNKNOWN:
                    continue          # stopping before we knew where to start: not taken
                if current is None or current.revoking:
                    self._epoch += 1
                    self._start_at(tp, positions[tp])
            self._sync_paused()
        self.app.middleware.after("partitions_assigned", list(tps))

    def _sync_paused(self) -> None:
        # kafka-python keeps the paused flag of a partition across an eager revoke and assign,
        # while our state for it is new ("not paused"): nothing would ever resume it. Take the
        # consumer's word for what is paused, then decide again.
        paused = set(self.consumer.paused())
        for ps in self.partitions.values():
            ps.paused = ps.tp in paused
            self._update_pause(ps)

    def _committed(self, tp: TopicPartition) -> Any:
        """The committed offset of ``tp`` (None: the group never committed one).

        A failed lookup is never read as "no commit": that would restart the partition from
        the beginning, or with ``auto_offset_reset=latest`` skip every uncommitted record.
        It is retried with backoff until it answers; only a stop request ends the retries,
        with :data:`_UNKNOWN` (the partition is then not started at all).
        """
        failures = 0
        while True:
            try:
                found = self.consumer.committed(tp, metadata=True)
                self._offset_maps[tp] = found.metadata if found is not None else ""
                return found.offset if found is not None else None
            except KafkaError as exc:
                failures += 1
                if self._stop:
                    logger.warning("cannot read the committed offset of %s/%d (%s) while stopping: not "
                                   "starting it", tp.topic, tp.partition, exc)
                    return _UNKNOWN
                backoff = min(5.0, 0.1 * 2 ** min(failures, 6))
                logger.warning("cannot read the committed offset of %s/%d (%s: %s); asking again in %.1fs "
                               "(never guessing a start position)", tp.topic, tp.partition,
                               type(exc).__name__, exc, backoff)
                time.sleep(backoff)

    def _start_at(self, tp: TopicPartition, committed: int | None) -> None:
        """Seek to the committed offset (or where auto_offset_reset says) with a fresh state."""
        if committed is None:
            if self.settings.auto_offset_reset == "earliest":
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek_to_end(tp)
            self.partitions[tp] = PartitionState(tp, self._epoch)
        else:
            self.consumer.seek(tp, committed)
            earlier = offsetmap.decode(self._offset_maps.pop(tp, ""), committed)
            self.partitions[tp] = PartitionState(tp, self._epoch, tracker=OffsetTracker(committed, earlier))

    def _on_revoked(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            mine = [tp for tp in tps if tp in self.partitions]
            if not mine:
                return
            for tp in mine:
                self.partitions[tp].revoking = True
            waiting = set(mine)
            # Stop dispatching: queued records of these partitions are dropped (uncommitted,
            # the next owner gets them); running ones may finish within the deadline.
            self.ready = deque(j for j in self.ready if j.ps.tp not in waiting)
        timeout_s = self.settings.revoke_timeout_ms / 1000.0
        deadline = time.monotonic() + timeout_s
        # Wait without holding the lock: the loop goes on dispatching other partitions and
        # checking time limits meanwhile. The loop may itself be inside poll() for this very
        # rebalance, so each turn here also collects results and pumps publishes.
        while not self._cold:
            with self._lock:
                self._collect(0.0)
                self._pump_publishes()
                busy = sum(1 for c in self.pool.children for j in c.outstanding.values() if j.ps.tp in waiting)
                pending = sum(1 for p in self.publishing if p.job.ps.tp in waiting)
            if not busy and not pending:
                break
            if time.monotonic() >= deadline:
                logger.warning("revoke: tasks of %s still running after %.1fs; releasing anyway (the ledger "
                               "keeps their next owner from running them twice)",
                               ", ".join(map(str, mine)), timeout_s)
                break
            if pending:
                self._flush_quietly(0.05)
            else:
                time.sleep(0.02)
        # Commit before giving the partitions up, retrying retriable errors until the deadline.
        while True:
            with self._lock:
                if self._maybe_commit(force=True, only=mine):
                    break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        with self._lock:
            for tp in mine:
                ps = self.partitions.get(tp)
                if ps is not None:
                    logger.info("released %s/%d at offset %s", tp.topic, tp.partition, ps.tracker.committed)
            self._drop(mine)
        self.app.middleware.after("partitions_revoked", mine)

    def _flush_quietly(self, timeout_s: float) -> bool:
        """Flush the producer for up to ``timeout_s``; False (no exception) if records are still unsent."""
        try:
            self.app.producer.flush(timeout_s)
        except KafkaError:
            return False
        return True

    def _on_lost(self, tps: list[TopicPartition]) -> None:
        with self._lock:
            mine = [tp for tp in tps if tp in self.partitions]
            self._drop(mine)
        self.app.middleware.after("partitions_revoked", mine)

    def _drop(self, tps: list[TopicPartition]) -> None:
        gone = set(tps)
        for tp in tps:
            self.partitions.pop(tp, None)
        self.ready = deque(j for j in self.ready if j.ps.tp not in gone)
        self.publishing = [p for p in self.publishing if p.job.ps.tp not in gone]

    # -- shutdown -------------------------------------------------------------
    def _shutdown(self) -> int:
        code = EXIT_OK
        with self._lock:
            n = self._in_flight
            self.ready.clear()
            for ps in self.partitions.values():
                if not ps.paused:
                    self.consumer.pause(ps.tp)
                    ps.paused = True
        if not self._cold:
            logger.info("warm shutdown: waiting for %d in-flight task(s) (up to %.0fs); "
                        "signal again for a cold shutdown", n, self.settings.shutdown_timeout_ms / 1000.0)
            deadline = time.monotonic() + self.settings.shutdown_timeout_ms / 1000.0
            while (self._in_flight or self.publishing) and time.monotonic() < deadline and not self._cold:
                self.consumer.poll(timeout_ms=0)
                with self._lock:
                    self._collect(0.05)
                    self._check_time_limits()
                    self._pump_publishes()
                    if self.publishing:
                        # A broker that does not answer makes a flush time out: keep waiting
                        # until the deadline, it is not a reason to crash.
                        self._flush_quietly(0.05)
                    self._maybe_commit()
        if self._cold or self._in_flight:
            logger.warning("cold shutdown: killing %d running task(s); they will be redelivered",
                           self._in_flight)
            self.pool.terminate()
            code = EXIT_COLD
        with self._lock:
            unsent = len(self.publishing)
            if unsent:
                logger.warning("%d retry/dead-letter copies were not acknowledged in time: their records stay "
                               "uncommitted and will be delivered again", unsent)
                code = EXIT_COLD
            for attempt in range(3):
                if attempt:
                    time.sleep(0.2)
                if self._maybe_commit(force=True, timeout_ms=SHUTDOWN_COMMIT_TIMEOUT_MS):
                    break
            committed = {f"{tp.topic}/{tp.partition}": ps.tracker.committed
                         for tp, ps in sorted(self.partitions.items()) if ps.tracker.committed is not None}
            uncommitted = sum(len(ps.finished) for ps in self.partitions.values())
            self.partitions.clear()
        if uncommitted:
            code = EXIT_UNCOMMITTED
        # close() leaves the group, so the others take our partitions over at once.
        try:
            self.consumer.close(timeout_ms=10000)
        except KafkaError as exc:
            logger.warning("closing the consumer failed (%s: %s); the group notices after session_timeout_ms",
                           type(exc).__name__, exc)
        self.pool.stop(timeout_s=10.0)
        if not self._flush_quietly(10.0):
            logger.warning("records sent by this process were still unacknowledged after 10s")
        self._log_summary(committed, uncommitted, unsent)
        return code

    def _log_summary(self, committed: dict[str, Any], uncommitted: int = 0, unsent: int = 0) -> None:
        s = self.stats
        elapsed = time.monotonic() - s.started_at
        done = s.succeeded + s.skipped
        if uncommitted:
            fate = (f"{s.committed} finished record(s) committed, {uncommitted} finished record(s) not committed "
                    "(they will be delivered again)")
        else:
            fate = f"all finished records committed ({s.committed})"
        if unsent:
            fate += f"; {unsent} retry/dead-letter copies unsent (their records will be delivered again)"
        logger.log(
            logging.WARNING if uncommitted or unsent else logging.INFO,
            "worker stopped after %.1fs: %d succeeded, %d skipped (already done), %d retried, "
            "%d dead-lettered, %d lost children, %d children replaced; %.1f tasks/s; committed %s; %s",
            elapsed, s.succeeded, s.skipped, s.retried, s.dead_lettered, s.lost, self.pool.replaced,
            done / elapsed if elapsed > 0 else 0.0, committed or "nothing", fate)
