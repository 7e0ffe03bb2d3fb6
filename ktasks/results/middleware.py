"""The results middleware: who publishes a task's outcome, where, and when it is acknowledged.

Installed by every :class:`~ktasks.App`. In the sender's process it gives a
results task the sender's reply partition (``meta["reply"]``); in the worker's
child it publishes the outcome of a task that will not be retried (a value, or
a failure with its type, message and traceback) to the reply partition and to
the results topic, enqueues a chain's next step, and reports a chord member's
outcome to the chords topic; in the worker's parent it publishes the failure
of a task dead-lettered without running to its end (expired, poison, rejected,
time limit, lost child), and runs the chord joiner (:mod:`.chord`).

Plain results are sent without waiting; the child waits for all of them once
per batch (``child_batch_done``), before it reports the batch finished, so
results cost one wait per batch, not one per task. A chain step or a chord
member outcome is waited for at once, before the task's success is committed
to the ledger, so a crash never leaves a workflow without its next step.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import KtasksError
from ..kafka.errors import KafkaError
from ..middleware import Middleware
from .records import (
    DEAD_LETTER_TYPES,
    META_CHAIN,
    META_CHORD,
    META_FINAL,
    META_REPLY,
    META_STORE,
    ResultRecord,
    ensure_result_topics,
    exc_triple,
    failure_of,
    partition_for,
    replies_topic,
    results_topic,
    success_of,
)

if TYPE_CHECKING:
    from ..app import App
    from ..message import Message
    from ..task import TaskContext

logger = logging.getLogger(__name__)

#: Meta keys whose task's outcome goes somewhere (a chain's next step, its last step's waiter, a chord).
_WORKFLOW_META = frozenset({META_CHAIN, META_FINAL, META_CHORD})

__all__ = ["ResultsMiddleware", "results_middleware"]

#: Dead-letter reasons whose failure the child already published (from ``after_task``).
_PUBLISHED_BY_CHILD = frozenset({"retries-exhausted", "not-retriable"})


class ResultsMiddleware(Middleware):
    """Publishes task outcomes for ``get()``, ``app.result()`` and the canvas (see the module's docstring)."""

    task_options: ClassVar[Mapping[str, Any]] = {"store_result": False}

    def __init__(self, app: App) -> None:
        self.app = app
        self._pending: list[Any] = []            # send futures of plain results, waited for per batch
        #: Eager mode's results, by task id (nothing goes through Kafka there).
        self.eager_results: dict[str, ResultRecord] = {}
        self._joiner: Any = None

    # -- who stores a result --------------------------------------------------
    def stores(self, message: Message) -> bool:
        """Whether ``message``'s outcome is published: forced by the canvas, the app's setting, or the task's option."""
        if message.meta.get(META_STORE) or self.app.settings.store_results:
            return True
        task = self.app.tasks.get(message.task)
        return bool(task is not None and task.option("store_result"))

    # -- sender ---------------------------------------------------------------
    def before_enqueue(self, message: Message, topic: str) -> None:
        if self.app.settings.eager or META_REPLY in message.meta or not self.stores(message):
            return
        from .replies import reader_for

        reader = reader_for(self.app)
        message.meta[META_REPLY] = reader.partition
        reader.expect(message.id)

    # -- worker child (and eager mode) ------------------------------------------
    def after_task(self, ctx: TaskContext, result: Any, exc: BaseException | None) -> None:
        msg = ctx.message
        if not self.app.settings.eager and not self.stores(msg) and not _WORKFLOW_META.intersection(msg.meta):
            return      # nothing to publish: no result stored, no chain, chord or waiter to tell
        if exc is not None and ctx.task.should_retry(exc, msg.attempt):
            return      # another attempt follows: nothing is final yet
        if exc is None:
            self.publish(msg, success_of(self.app, msg.id, msg.task, result))
        else:
            from ..errors import Retry

            cause = exc.exc if isinstance(exc, Retry) and exc.exc is not None else exc
            kind, text, tb = exc_triple(cause)
            self.publish(msg, failure_of(self.app, msg.id, msg.task, kind, text, tb,
                                         ctx.task.dead_letter_reason(exc)))

    def child_batch_done(self, app: Any) -> None:
        pending, self._pending = self._pending, []
        if pending:
            self._wait(pending, "result")

    # -- worker parent ----------------------------------------------------------
    def task_not_run(self, message: Message, outcome: str, reason: str | None) -> None:
        kind = "ktasks.errors.TaskRevoked" if outcome == "revoked" else "ktasks.errors.TaskExpired"
        self.publish(message, failure_of(self.app, message.id, message.task, kind,
                                         f"{outcome} before it ran{f' ({reason})' if reason else ''}", "", outcome))

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        if message is None or reason in _PUBLISHED_BY_CHILD:
            return
        kind = DEAD_LETTER_TYPES.get(reason, "ktasks.errors.TaskError")
        self.publish(message, failure_of(self.app, message.id, message.task, kind,
                                         f"dead-lettered ({reason}) without a result", "", reason))

    def worker_started(self, worker: Any) -> None:
        if self.app.settings.chord_join:
            from .chord import ChordJoiner

            self._joiner = ChordJoiner(self.app)
            self._joiner.start()

    def worker_stopping(self, worker: Any) -> None:
        if self._joiner is not None:
            self._joiner.stop(wait=False)

    def worker_stopped(self, worker: Any) -> None:
        if self._joiner is not None:
            self._joiner.stop()
            self._joiner = None

    # -- publishing ---------------------------------------------------------------
    def publish(self, message: Message, record: ResultRecord) -> None:
        """Publish ``record`` (the outcome of ``message``) and carry its workflow on."""
        meta = message.meta
        if self.app.settings.eager:
            self._publish_eager(message, record)
            return
        if self.stores(message):
            self._pending.extend(self.send_result(record, meta.get(META_REPLY)))
        urgent: list[Any] = []
        final = meta.get(META_FINAL)
        if record.ok and meta.get(META_CHAIN):
            from .canvas import enqueue_next

            urgent.append(enqueue_next(self.app, message, record.value).future)
        elif not record.ok and isinstance(final, str) and final != message.id:
            # A chain step failed: whoever waits for the chain's last step learns it now.
            failed = ResultRecord(final, record.task, False, None, record.exc,
                                  f"chain step {record.task}[{record.id}] failed", record.at, record.exp)
            urgent.extend(self.send_result(failed, meta.get(META_REPLY)))
        chord = meta.get(META_CHORD)
        if isinstance(chord, list) and len(chord) == 2:
            from .chord import send_member

            urgent.append(send_member(self.app, chord[0], chord[1], record))
        if urgent:
            self._wait(urgent, "workflow")

    def send_result(self, record: ResultRecord, reply: Any) -> list[Any]:
        """Send ``record`` to the results topic and, when ``reply`` is a partition, to the replies topic."""
        ensure_result_topics(self.app)
        value = record.encode()
        key = record.id.encode()
        futures = []
        topic = results_topic(self.app)
        partitions = self.app.topics.partitions_of(topic) or self.app.settings.results_partitions
        futures.append(self.app.send_raw(topic, value, key=key, partition=partition_for(record.id, partitions)))
        if isinstance(reply, int) and not isinstance(reply, bool):
            futures.append(self.app.send_raw(replies_topic(self.app), value, key=key, partition=reply))
        return futures

    def _wait(self, futures: list[Any], what: str) -> None:
        """Wait until ``futures`` are acknowledged: one flush, then name what failed."""
        timeout_s = self.app.settings.send_timeout_ms / 1000.0
        try:
            self.app.producer.flush(timeout_s)
        except KafkaError:
            pass
        bad = [f for f in futures if not f.is_done or f.failed()]
        if bad:
            first = bad[0].exception if bad[0].is_done else "not acknowledged in time"
            logger.error("%d of %d %s record(s) were not stored by Kafka (%s): a get() on them will time out",
                         len(bad), len(futures), what, first)

    def _publish_eager(self, message: Message, record: ResultRecord) -> None:
        meta = message.meta
        if self.stores(message):
            self.eager_results[record.id] = record
        final = meta.get(META_FINAL)
        if record.ok and meta.get(META_CHAIN):
            from .canvas import enqueue_next

            enqueue_next(self.app, message, record.value)
        elif not record.ok and isinstance(final, str) and final != message.id:
            self.eager_results[final] = ResultRecord(final, record.task, False, None, record.exc,
                                                     f"chain step {record.task}[{record.id}] failed",
                                                     record.at, record.exp)
        chord = meta.get(META_CHORD)
        if isinstance(chord, list) and len(chord) == 2:
            from .chord import eager_member

            eager_member(self.app, chord[0], chord[1], record)


def results_middleware(app: App) -> ResultsMiddleware:
    """The app's results middleware (every App installs one)."""
    for item in app.middleware:
        if isinstance(item, ResultsMiddleware):
            return item
    raise KtasksError(f"app {app.name!r} has no ResultsMiddleware")
