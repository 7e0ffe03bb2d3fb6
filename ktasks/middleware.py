"""Hooks as middleware: subclass :class:`Middleware`, override what you need.

Middleware is given to the app (``App(..., middleware=[...])`` or
``app.add_middleware(m)``) and called in order for ``before_*`` hooks and in
reverse order for ``after_*`` hooks, like dramatiq's. Hooks run in the process
where the event happens: enqueue hooks in the caller's process, task hooks in
the worker child that runs the task, worker hooks in the worker parent.
An exception raised by a hook is logged and does not stop the others.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from kafka import TopicPartition

    from .message import Message
    from .task import TaskContext

logger = logging.getLogger(__name__)

__all__ = ["Middleware", "MiddlewareStack", "TaskEvent", "OUTCOMES"]

#: What can become of a record the worker took, one per record (see :class:`TaskEvent`):
#: ``succeeded``; ``skipped`` (the ledger had it done); ``retried`` (failed, republished to a retry
#: topic); ``failed`` (raised, or its child died, with no retry left: dead-lettered);
#: ``dead_lettered`` (never ran: undecodable, unregistered, or a poison message); ``expired`` (reached
#: a worker after its ``expires`` time: dead-lettered unrun); ``revoked`` (reserved: no revoke command yet).
OUTCOMES = ("succeeded", "failed", "retried", "dead_lettered", "skipped", "revoked", "expired")
_NEVER_RAN = ("dead_lettered", "revoked", "expired")    # no enqueue-to-start time for these


@dataclass(frozen=True)
class TaskEvent:
    """A record the worker parent is done with: what became of it, and how long it took.

    ``run_time_s`` is how long the task function ran (``None`` when no child
    ran it); ``queued_s`` is from enqueue (or from when it was due, for a retry
    or a countdown) to its start, ``None`` when it never started (nor for
    ``dead_lettered``, ``expired`` and ``revoked`` records). The start is
    the moment the child's result arrived less the run time, so it is late by
    at most the child's result batching (``RESULT_FLUSH_S``, 50 ms).
    """

    task: str
    task_id: str | None
    outcome: str
    topic: str
    partition: int
    offset: int
    run_time_s: float | None = None
    queued_s: float | None = None
    reason: str | None = None

    @classmethod
    def of(cls, message: Message | None, task: str, outcome: str, record: Any, *,
           run_time_s: float | None = None, started: bool = True, reason: str | None = None) -> TaskEvent:
        """The event of ``record`` (a Kafka record) whose decoded ``message`` (if any) ended in ``outcome``."""
        queued = None
        if started and message is not None and outcome not in _NEVER_RAN:
            since = message.due if message.due is not None else message.created
            # Producer and worker clocks may differ: never a negative wait.
            queued = max(0.0, time.time() - (run_time_s or 0.0) - since)
        return cls(task, message.id if message else None, outcome, record.topic, record.partition,
                   record.offset, run_time_s, queued, reason)


class Middleware:
    """Base class: every hook is a no-op."""

    def before_enqueue(self, message: Message, topic: str) -> None:
        """Called before a message is sent; raising here prevents the send."""

    def after_enqueue(self, message: Message, topic: str) -> None:
        """Called after ``send`` was called (not after the broker acknowledged)."""

    def before_task(self, ctx: TaskContext) -> None:
        """Called in the child right before the task function runs."""

    def after_task(self, ctx: TaskContext, result: Any, exc: BaseException | None) -> None:
        """Called in the child after the task function returned or raised."""

    def on_retry(self, message: Message, delay_s: float, exc: BaseException | None) -> None:
        """Called in the worker parent when a failed task is scheduled again."""

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        """Called in the worker parent when a record goes to the dead-letter topic."""

    def task_finished(self, event: TaskEvent) -> None:
        """Called in the worker parent once per record it took, when its outcome is known.

        Runs on the worker's loop: keep it quick (count, don't do I/O).
        """

    def offsets_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Called in the worker parent after a commit of ``{partition: offset}`` succeeded."""

    def commit_failed(self, exc: BaseException) -> None:
        """Called in the worker parent when a commit failed (rejected in a rebalance, or an error)."""

    def partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        """Called in the worker parent (on the rebalance thread) when partitions are assigned."""

    def partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        """Called in the worker parent when partitions were released (revoked, or lost)."""

    def worker_started(self, worker: Any) -> None:
        """Called in the worker parent once it has joined the group."""

    def worker_stopped(self, worker: Any) -> None:
        """Called in the worker parent at shutdown."""


class MiddlewareStack:
    """Calls one hook on every middleware, isolating failures."""

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        self._items: list[Middleware] = list(middleware)

    def add(self, middleware: Middleware) -> None:
        self._items.append(middleware)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def before(self, hook: str, *args: Any, strict: bool = False) -> None:
        for item in self._items:
            self._call(item, hook, args, strict)

    def after(self, hook: str, *args: Any) -> None:
        for item in reversed(self._items):
            self._call(item, hook, args, False)

    @staticmethod
    def _call(item: Middleware, hook: str, args: tuple[Any, ...], strict: bool) -> None:
        try:
            getattr(item, hook)(*args)
        except Exception:
            if strict:
                raise
            logger.exception("middleware %s.%s failed", type(item).__name__, hook)
