"""The worker parent's lifecycle: start, run the loop, stop; the parts it is built from live beside it.

One thread runs the loop: poll (always, so the group never thinks we are
stuck, however long tasks run), take the records (:mod:`.intake`), hand
ready jobs to idle children and collect their results (:mod:`.dispatch`,
:mod:`.outcomes`), pump retry and dead-letter publishes (:mod:`.outbox`),
commit finished offsets in batches (:mod:`.committer`). Rebalance callbacks
(:mod:`.rebalance`) run on a helper thread (see :mod:`.membership`) and
share the loop's state (:mod:`.partitions`) under ``self._lock``. Built-in
features are middleware (:mod:`ktasks.middleware`), not code here.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from collections.abc import Iterable
from typing import Any

from .. import faults
from ..errors import KtasksError
from ..kafka import TopicPartition
from ..kafka.consumer import Listener, build_consumer
from ..kafka.errors import KafkaError
from ..readiness import until_reachable, wait_for_cluster
from .committer import Committer
from .dispatch import QUICK_TASK_S, Dispatcher
from .intake import RecordIntake
from .outbox import Outbox, PendingPublish
from .outcomes import Outcomes, Stats
from .partitions import Job, Partitions, PartitionState
from .pool import Pool
from .rebalance import Rebalance
from .transactions import Transactions

logger = logging.getLogger(__name__)

__all__ = ["Worker", "EXIT_OK", "EXIT_COLD", "EXIT_ERROR", "EXIT_UNCOMMITTED", "Job", "PartitionState",
           "PendingPublish", "Stats", "QUICK_TASK_S"]

EXIT_OK = 0        # warm shutdown: everything finished was committed
EXIT_ERROR = 1     # could not start or failed
EXIT_COLD = 3      # cold shutdown: in-flight (or unpublished) records were left, and will be redelivered
EXIT_UNCOMMITTED = 4   # stopped, but finished records could not be committed: they will be delivered again

#: How often the worker checks that its topics still exist.
TOPIC_CHECK_S = 5.0

#: Longest each of the final commits at shutdown may block (kafka-python's default is 30 s).
SHUTDOWN_COMMIT_TIMEOUT_MS = 5000


#: How long the children may take to import the app and say they are ready.
CHILD_START_TIMEOUT_S = 120.0


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
        self.pid = os.getpid()    # the parent's, as worker reports name it
        self._retry_topics = {rt: t for t in self.topics for rt in app.retry_topics(t)}
        # Delay of each delay-tier topic, in seconds: the longest it may hold its partition.
        tier_s = {app.retry_topic(t, ms): ms / 1000.0 for t in self.topics for ms in app.settings.retry_tiers_ms}
        # With async def tasks every child runs an event loop with async_concurrency slots (see .aio).
        capacity = self.settings.async_concurrency if any(t.is_async for t in app.tasks.values()) else 1
        self.pool = Pool(app_spec, self.concurrency, loglevel=loglevel, log_format=log_format,
                         faults_spec=self.settings.faults, overrides=self.overrides, capacity=capacity)
        self.stats = Stats()
        self._lock = threading.Lock()
        self._stop = False
        self._cold = False
        self._idle_polls = 0
        self._next_topic_check = 0.0
        self._exit_code: int | None = None      # set when the worker stops itself on an error
        self._summary: tuple[dict[str, Any], int, int] | None = None   # for the last line, from _shutdown
        #: Set at shutdown when the producer's last flush timed out (Kafka unreachable): what
        #: the middleware would still send as they stop would only wait for it again.
        self.unsent_at_exit = False

        def stopping() -> bool:
            return self._stop

        # The parts, each given only the others it talks to (see docs/concepts.md).
        self.table = Partitions(self.settings.prefetch_per_partition, self.settings.auto_offset_reset)
        self.outcomes = Outcomes(app, self.table, self.stats, release=lambda job: self.intake.release(job))
        self.dispatcher = Dispatcher(self.pool, self.table, self.outcomes, self.settings, stopping)
        self.outbox = Outbox(app, self.table, self.stats, group_id=self.group_id, host=self.host,
                             published=self.outcomes.complete)
        self.outcomes.outbox = self.outbox
        self.committer = Committer(app, self.settings, self.table, self.outbox, self.stats, group_id=self.group_id,
                                   host=self.host, stopping=stopping, check_topics=self._check_topics)
        self.intake = RecordIntake(app, self.table, self.committer, self.outbox, self.outcomes,
                                   self.dispatcher.queue, retry_topics=self._retry_topics, tier_s=tier_s,
                                   ready_first=self.dispatcher.queue_first)
        self.rebalance = Rebalance(app, self.settings, self._lock, self.table, self.committer, self.dispatcher,
                                   self.outbox, cold=lambda: self._cold, stopping=stopping)
        self.transactions: Transactions | None = None
        if self.settings.transactional:
            self.transactions = Transactions(app, self.settings, self.group_id, self.host)
            self.committer.transactions = self.outcomes.transactions = self.transactions
        self._consumer: Any = None
        faults.configure(self.settings.faults)

    # -- what the parts share, and what tests step ------------------------------------
    @property
    def consumer(self) -> Any:
        return self._consumer

    @consumer.setter
    def consumer(self, consumer: Any) -> None:
        self._consumer = consumer
        self.table.consumer = self.committer.consumer = self.intake.consumer = consumer

    @property
    def partitions(self) -> dict[TopicPartition, PartitionState]:
        """The partitions owned now, each with its assignment's state."""
        return self.table.states

    @property
    def ready(self) -> deque[Job]:
        return self.dispatcher.ready

    @property
    def publishing(self) -> list[PendingPublish]:
        return self.outbox.pending

    @property
    def _in_flight(self) -> int:
        return self.dispatcher.in_flight

    def _on_assigned(self, tps: list[TopicPartition]) -> None:
        self.rebalance.assigned(tps)

    def _on_revoked(self, tps: list[TopicPartition]) -> None:
        self.rebalance.revoked(tps)

    def _on_lost(self, tps: list[TopicPartition]) -> None:
        self.rebalance.lost(tps)

    def _collect(self, timeout_s: float) -> None:
        self.dispatcher.collect(timeout_s)

    def _pump_publishes(self) -> None:
        self.outbox.pump()

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
        if not until_reachable(self.settings, self.app.client_id, lambda: self.app.ensure_topics(
                all_topics + [self.app.dead_letter_topic(t) for t in self.topics]), lambda: self._stop):
            return EXIT_OK
        # Raising here (a ledger file that cannot be used) stops the worker before any child starts.
        self.app.middleware.before("worker_starting", self, strict=True)
        # Children take about half a second to import the app: they start now, while the
        # consumer is built, and the worker waits for them last.
        self.pool.spawn()
        try:
            if self.transactions is not None:
                self.transactions.start(self)
            self.consumer = build_consumer(self.settings, self.group_id, self.app.client_id)
            self.consumer.subscribe(all_topics, listener=Listener(self._on_assigned, self._on_revoked,
                                                                  self._on_lost))
            self._await_metadata(all_topics)
            self.pool.wait_ready(CHILD_START_TIMEOUT_S)
        except BaseException:
            self.pool.terminate()
            raise
        self.stats.started_at = time.monotonic()
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
        self.app.middleware.after("worker_stopped", self)
        # Last, after what the middleware logs as it stops (the ETA scheduler, say): the one line
        # that says how the run ended.
        if self._summary is not None:
            self._log_summary(*self._summary)
        return code

    def _await_metadata(self, topics: list[str]) -> None:
        # kafka-python can lose the metadata update that subscribe() asks for: when a refresh
        # is already in flight (the client's first one, right after bootstrap), its response,
        # which lacks our topics, clears the "update needed" flag (see the TODO in
        # kafka.cluster.ClusterMetadata.set_topics). The first assignment is then empty and
        # nothing asks for metadata again for metadata_max_age_ms (5 minutes): the worker sits
        # in the group with no partitions. Fetching our topics' partitions here, before the
        # first poll joins the group, waits out any in-flight refresh and loads them.
        # A broker that goes down between the readiness check and here must not kill the
        # worker: it waits, like a worker started before Kafka (a stop request ends the wait,
        # and the main loop then never runs).
        def fetch() -> None:
            faults.point("startup_metadata")
            for topic in topics:
                self.consumer.partitions_for_topic(topic)

        until_reachable(self.settings, self.app.client_id, fetch, lambda: self._stop)

    def _iterate(self) -> None:
        dispatcher = self.dispatcher
        busy = bool(dispatcher.in_flight or dispatcher.ready or self.outbox.pending)
        timeout_ms = 0 if busy else self.settings.poll_timeout_ms
        deferred_s = self.intake.next_deferred_s(time.time())
        if deferred_s is not None:
            timeout_ms = min(timeout_ms, int(deferred_s * 1000))
        records = self.consumer.poll(timeout_ms=timeout_ms)
        with self._lock:
            now = time.time()
            self.table.release_holds(now)
            self.intake.release_deferred(now)
            if records or busy:
                self._idle_polls = 0
                for tp, recs in records.items():
                    self.intake.accept(tp, recs)
            else:
                self._idle_polls += 1
            dispatcher.dispatch()
            dispatcher.collect(0.02 if dispatcher.in_flight else 0.0)
            dispatcher.take_back_waiting()
            dispatcher.dispatch()
            dispatcher.check_time_limits()
            self.outbox.pump()
            self.committer.maybe_commit()
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
        self.table.drop([tp for tp in self.table.states if tp.topic in missing])
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
        if self.dispatcher.in_flight or self.dispatcher.ready or len(self.outbox) or self._idle_polls < 3:
            return False
        if not self.table.states:
            return False
        # The end offsets the last fetch responses carried (highwater), not end_offsets(): that
        # is a ListOffsets round trip per idle iteration, and in kafka-python 3.0.12 it can
        # block forever despite its timeout (seen with partitions being paused and resumed:
        # the worker sat in it for minutes mid-backlog; a bare consumer reproduces it).
        # The highwater is only as fresh as the last fetch response, so a retry we just
        # published may be missing from it: our own acknowledged publishes count too.
        for tp, ps in list(self.table.states.items()):
            end = self.consumer.highwater(tp)
            if end is None or ps.tracker.in_flight:
                return False
            if self.consumer.position(tp) < max(end, self.outbox.published_end.get(tp, 0)):
                return False
        return True

    # -- shutdown -------------------------------------------------------------
    def _shutdown(self) -> int:
        code = EXIT_OK
        with self._lock:
            n = self.dispatcher.in_flight
            self.dispatcher.ready.clear()
            self.table.pause_all()
        if not self._cold:
            logger.info("warm shutdown: waiting for %d in-flight task(s) (up to %.0fs); "
                        "signal again for a cold shutdown", n, self.settings.shutdown_timeout_ms / 1000.0)
            deadline = time.monotonic() + self.settings.shutdown_timeout_ms / 1000.0
            while (self.dispatcher.in_flight or len(self.outbox)) and time.monotonic() < deadline \
                    and not self._cold:
                self.consumer.poll(timeout_ms=0)
                with self._lock:
                    self.dispatcher.collect(0.05)
                    self.dispatcher.check_time_limits()
                    self.outbox.pump()
                    if len(self.outbox):
                        # A broker that does not answer makes a flush time out: keep waiting
                        # until the deadline, it is not a reason to crash.
                        self.outbox.flush_quietly(0.05)
                    self.committer.maybe_commit()
        if self._cold or self.dispatcher.in_flight:
            logger.warning("cold shutdown: killing %d running task(s); they will be redelivered",
                           self.dispatcher.in_flight)
            self.pool.terminate()
            code = EXIT_COLD
        with self._lock:
            unsent = len(self.outbox)
            if unsent:
                logger.warning("%d retry/dead-letter copies were not acknowledged in time: their records stay "
                               "uncommitted and will be delivered again", unsent)
                code = EXIT_COLD
        self.outbox.sender.stop()
        self.app.middleware.after("worker_stopping", self)
        self.committer.final_commit(self._lock, SHUTDOWN_COMMIT_TIMEOUT_MS)
        if self.transactions is not None:
            self.transactions.close()
        with self._lock:
            committed = {f"{tp.topic}/{tp.partition}": ps.tracker.committed
                         for tp, ps in sorted(self.table.states.items()) if ps.tracker.committed is not None}
            uncommitted = sum(len(ps.finished) for ps in self.table) + self.rebalance.dropped_uncommitted
            self.table.clear()
        if uncommitted:
            code = EXIT_UNCOMMITTED
        # close() leaves the group, so the others take our partitions over at once.
        try:
            self.consumer.close(timeout_ms=10000)
        except KafkaError as exc:
            logger.warning("closing the consumer failed (%s: %s); the group notices after session_timeout_ms",
                           type(exc).__name__, exc)
        self.pool.stop(timeout_s=10.0)
        if not self.outbox.flush_quietly(10.0):
            logger.warning("records sent by this process were still unacknowledged after 10s")
            self.unsent_at_exit = True
        self._summary = (committed, uncommitted, unsent)
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
