"""Records the worker publishes for the records it took: retries, delays and dead letters.

A job whose outcome is a copy elsewhere (a retry, a move to a delay tier, a
dead letter) finishes only once the broker has the copy: until then its
offset stays uncommitted, and a failed send is tried again with backoff.
Every publish is fenced by the job's assignment epoch: once its partition
moved, the copy is dropped, since the new owner runs the record again.

The sends themselves are made on a thread of their own (:class:`Sender`):
kafka-python's ``send()`` blocks up to ``max_block_ms`` while it has no
metadata for the topic, and looking up or creating a delay tier or a
dead-letter topic blocks too. With the broker down, each attempt held the
worker's loop (commits, dispatch, shutdown) for ``send_timeout_ms``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from .. import faults
from ..deadletter import check_size, is_too_large, without_value
from ..deadletter import publish as publish_dead_letter
from ..headers import H_LAST_ERROR, delay_headers, retry_headers
from ..kafka import TopicPartition
from ..kafka.errors import KafkaError
from ..message import encode
from ..middleware import deadletter
from .partitions import Job, Partitions

logger = logging.getLogger(__name__)

__all__ = ["Outbox", "PendingPublish", "Sender", "clock"]


def clock(epoch_s: float) -> str:
    """A wall-clock time for log lines: ``2026-12-04 15:02:03 UTC``."""
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(epoch_s))


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
    #: Handed to the :class:`Sender`, which has not said yet how the send went.
    sending: bool = False


class Sender:
    """Calls the publishes' ``send()`` on a thread of its own, so a send that blocks blocks only it.

    The outcome of each call (a future, or the exception it raised) waits in
    :attr:`done` until the loop takes it (:meth:`Outbox.pump`): every decision
    about a publish is still made on the loop's thread.
    """

    def __init__(self) -> None:
        self._todo: queue.SimpleQueue[PendingPublish | None] = queue.SimpleQueue()
        self.done: queue.SimpleQueue[tuple[PendingPublish, Any, BaseException | None]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None

    def submit(self, pending: PendingPublish) -> None:
        pending.sending = True
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="ktasks-outbox", daemon=True)
            self._thread.start()
        self._todo.put(pending)

    def stop(self) -> None:
        """Let the thread end once the sends before this one are made; a send still blocked is not waited for."""
        if self._thread is not None:
            self._todo.put(None)
            self._thread = None

    def _run(self) -> None:
        while (pending := self._todo.get()) is not None:
            try:
                self.done.put((pending, pending.send(), None))
            except Exception as exc:
                self.done.put((pending, None, exc))


class Outbox:
    """The publishes in flight; ``published(job)`` is called when the broker acknowledged a job's copy."""

    def __init__(self, app: Any, partitions: Partitions, stats: Any, *, group_id: str, host: str,
                 published: Callable[[Job], None]) -> None:
        self.app = app
        self.partitions = partitions
        self.stats = stats
        self.group_id = group_id
        self.host = host
        self._published = published
        self.pending: list[PendingPublish] = []
        #: Offset just past the last copy acknowledged, per partition (burst mode's end check).
        self.published_end: dict[TopicPartition, int] = {}
        self.sender = Sender()
        partitions.on_drop(self.forget)

    def __len__(self) -> int:
        return len(self.pending)

    def forget(self, gone: set[TopicPartition]) -> None:
        self.pending = [p for p in self.pending if p.job.ps.tp not in gone]

    def count_for(self, tps: Iterable[TopicPartition]) -> int:
        """Publishes still on their way for jobs of ``tps``."""
        wanted = set(tps)
        return sum(1 for p in self.pending if p.job.ps.tp in wanted)

    # -- what is published ---------------------------------------------------------
    def retry(self, job: Job, delay_s: float, exc_type: str | None, exc_message: str | None) -> None:
        """Publish the next attempt of ``job`` to the delay tier of ``delay_s``."""
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

    def delay(self, job: Job, due: float, from_tier: bool) -> None:
        """Publish ``job``'s record, unchanged, to the delay tier of the time left until ``due``."""
        job.takes_key = False
        left_s = max(0.0, due - time.time())
        topic = self.app.retry_topic(job.origin_topic, self.app.delay_tier_ms(left_s))
        headers = delay_headers(job.record.headers, job.origin_topic, from_tier)
        value = job.value or job.record.value
        logger.info("task %s[%s] due %s: moved to %s", job.message.task if job.message else "?",
                    job.message.id if job.message else "?", clock(due), topic, extra=job.log_extra())

        def send() -> Any:
            return self._send_checked(topic, value, job.record.key, headers)

        self._publish(PendingPublish(job, "delay", send,
                                     smaller=[self._too_large_dead_letter(job, "delay", None, None)]))

    def dead_letter(self, job: Job, reason: str, exc_type: str | None = None, exc_message: str | None = None,
                    stacktrace: str | None = None) -> None:
        dl = deadletter.record_of(job, reason, exc_type, exc_message, stacktrace, group=self.group_id,
                                  host=self.host)

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

    def _send_checked(self, topic: str, value: bytes, key: bytes | None, headers: list[tuple[str, bytes]]) -> Any:
        # A record the broker rejects as too large puts kafka-python's idempotent producer in
        # a fatal state (every later send fails): check the topic's limit first.
        check_size(self.app, topic, value, key, headers)
        return self.app.send_raw(topic, value, key=key, headers=headers)

    def _too_large_dead_letter(self, job: Job, kind: str, exc_type: str | None, exc_message: str | None
                               ) -> tuple[str, Any]:
        """The last resort for a copy too large for the broker: a dead letter without the value."""
        dl = without_value(deadletter.record_of(job, deadletter.TOO_LARGE, exc_type, exc_message, None,
                                                group=self.group_id, host=self.host),
                           f"the {kind} copy was rejected by the broker as too large")

        def send() -> Any:
            return publish_dead_letter(self.app, dl)

        return "a dead letter without the value (reason too-large)", send

    # -- sending -------------------------------------------------------------------
    def fenced(self, job: Job, what: str) -> bool:
        """True (and nothing is done) when ``job`` belongs to an assignment epoch we no longer own.

        Its partition was revoked or lost since the record was taken: the new owner runs the
        record again, so a completion, retry or dead-letter copy from this epoch would run
        it twice (or move someone else's offset). A revoking partition still owns its jobs.
        """
        if self.partitions.owns(job):
            return False
        logger.info("%s of %s@%d dropped: its partition was revoked since the record was taken "
                    "(epoch %d); its new owner decides", what, job.record.topic, job.offset, job.ps.epoch,
                    extra=job.log_extra())
        return True

    def _publish(self, pending: PendingPublish) -> None:
        if self.fenced(pending.job, f"{pending.kind} publish"):
            return
        self.pending.append(pending)
        self._try_send(pending)

    def _try_send(self, pending: PendingPublish) -> None:
        self.sender.submit(pending)

    def _take_sent(self) -> None:
        """Take what the sender thread made of the sends it was given."""
        while True:
            try:
                pending, future, exc = self.sender.done.get_nowait()
            except queue.Empty:
                return
            pending.sending = False
            if not any(p is pending for p in self.pending):
                continue    # dropped meanwhile: its partition moved
            if exc is not None:
                self._failed(pending, exc)
            else:
                pending.future = future

    def _failed(self, pending: PendingPublish, exc: BaseException) -> None:
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

    def pump(self) -> None:
        """Finish the jobs whose copies the broker acknowledged; send again those due for another try."""
        self._take_sent()
        if not self.pending:
            return
        now = time.monotonic()
        still: list[PendingPublish] = []
        for p in self.pending:
            if not self.partitions.owns(p.job):
                continue    # partition moved: not ours to finish
            if p.sending:
                still.append(p)
            elif p.future is None:
                if now >= p.next_try:
                    self._try_send(p)
                still.append(p)
            elif p.future.is_done:
                if p.future.succeeded():
                    md = p.future.value
                    tp = TopicPartition(md.topic, md.partition)
                    self.published_end[tp] = max(self.published_end.get(tp, 0), md.offset + 1)
                    self._published(p.job)
                else:
                    self._failed(p, p.future.exception)
                    still.append(p)
            else:
                still.append(p)
        self.pending = still

    def flush_quietly(self, timeout_s: float) -> bool:
        """Flush the producer for up to ``timeout_s``; False (no exception) if records are still unsent."""
        try:
            self.app.producer.flush(timeout_s)
        except KafkaError:
            return False
        return True
