"""Hooks as middleware: subclass :class:`Middleware`, override what you need.

Middleware is given to the app (``App(..., middleware=[...])`` or
``app.add_middleware(m)``) and called in order for ``before_*`` hooks and in
reverse order for ``after_*`` hooks, like dramatiq's. Hooks run in the process
where the event happens: enqueue hooks in the caller's process, task hooks in
the worker child that runs the task, worker hooks in the worker parent.
An exception raised by an observer hook is logged and does not stop the
others; ``before_enqueue`` may raise to refuse a send, and ``intake`` may
answer with a decision (:class:`Skip`, :class:`Defer`, :class:`Reject`).

Each middleware declares the task options it owns in :attr:`Middleware.task_options`;
``@app.task(...)`` accepts those besides the core ones and rejects the rest, so
a typo in an option name fails at import time, not in production, and
``check_task_options`` lets the owner refuse a bad value at the same moment.
Add middleware before declaring the tasks that use its options.

The stack calls a hook only on the middleware that override it (see
:meth:`MiddlewareStack.hooked`), so a hook nobody implements costs nothing per
record, and ``intake`` is asked only of the middleware whose
:meth:`Middleware.decides_for` says the task concerns them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, NamedTuple, TypeAlias

from ..errors import exception_name

if TYPE_CHECKING:
    from ..kafka import OffsetAndMetadata, TopicPartition
    from ..message import Message
    from ..task import Task, TaskContext

logger = logging.getLogger(__name__)

__all__ = ["Middleware", "MiddlewareStack", "TaskEvent", "OUTCOMES", "Intake", "Skip", "Defer", "Reject",
           "Decision", "Dispatched"]

#: What can become of a record the worker took, one per record (see :class:`TaskEvent`):
#: ``succeeded``; ``skipped`` (the ledger had it done); ``retried`` (failed, republished to a retry
#: topic); ``failed`` (raised, or its child died, with no retry left: dead-lettered);
#: ``dead_lettered`` (never ran: undecodable, unregistered, or a poison message); ``expired`` (not started
#: by its ``expires`` time: not run); ``revoked`` (revoked before it started: not run). See docs/scheduling.md.
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
    #: The ledger key of the execution (``idempotency_key``, else the task id); None when undecodable.
    ledger_key: str | None = None

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
                   record.offset, run_time_s, queued, reason, message.ledger_key if message else None)


class Dispatched(NamedTuple):
    """A record the worker parent just handed to a child (see :meth:`Middleware.tasks_dispatched`)."""

    topic: str
    partition: int
    offset: int
    task: str
    ledger_key: str


@dataclass(frozen=True)
class Intake:
    """A record the worker parent took and decoded, before it is queued for a child.

    ``headers`` are the record's headers as sent; only ktasks' own reserved
    headers on ktasks' own topics are trusted (see :mod:`ktasks.headers`).
    ``origin_topic`` is the task topic the record belongs to (a retry or delay
    tier's record names its task topic); ``replay`` is true for a record
    replayed from the dead-letter topic by an operator.
    """

    message: Message
    task: Task[..., Any]
    topic: str
    partition: int
    offset: int
    key: bytes | None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    origin_topic: str = ""
    replay: bool = False


@dataclass(frozen=True)
class Skip:
    """Intake decision: do not run the record; it counts as finished and its offset is committed.

    ``outcome`` is what middleware observers see (``skipped``, ``revoked`` or
    ``expired``); ``reason`` goes to the log.
    """

    outcome: str = "skipped"
    reason: str | None = None


@dataclass(frozen=True)
class Defer:
    """Intake decision: not yet; offer the record to intake again at ``until`` (epoch seconds).

    The record keeps its place for its key (records with the same key wait
    behind it) but never holds up other keys of its partition. Its offset
    stays uncommitted until it finishes.
    """

    until: float
    reason: str | None = None


@dataclass(frozen=True)
class Reject:
    """Intake decision: never run the record; send it to the dead-letter topic.

    The dead letter's reason is ``rejected``; ``message`` says why (it becomes
    ``kafka_dlt-exception-message``), ``exc_type`` names the refusal's kind
    (``kafka_dlt-exception-fqcn``, default ``ktasks.errors.Rejected``). It can
    be replayed like any dead letter.
    """

    message: str
    exc_type: str = "ktasks.errors.Rejected"


Decision: TypeAlias = "Skip | Defer | Reject"


class Middleware:
    """Base class: every hook is a no-op.

    ``task_options`` names the ``@app.task(...)`` options this middleware
    owns, with their defaults (``{"rate_limit": None}``); a task's value is
    ``task.option(name)``.
    """

    task_options: ClassVar[Mapping[str, Any]] = {}

    def check_task_options(self, task_name: str, options: Mapping[str, Any]) -> None:
        """Called when a task is declared, with the values of the options this middleware owns.

        Raise :class:`~ktasks.errors.ConfigurationError` naming the task and the
        option to refuse a bad value (options nobody owns are refused before this).
        """

    def before_enqueue(self, message: Message, topic: str) -> None:
        """Called before a message is sent; raising here prevents the send."""

    def enqueue_headers(self, message: Message, topic: str) -> Iterable[tuple[str, bytes]] | None:
        """Called before a message is sent: headers to add to its record.

        Names starting ``ktasks-`` are reserved for ktasks' own middleware.
        """
        return None

    def after_enqueue(self, message: Message, topic: str) -> None:
        """Called after ``send`` was called (not after the broker acknowledged)."""

    def intake(self, record: Intake) -> Decision | None:
        """Called in the worker parent for each decoded record of a registered task, in order.

        Return ``None`` to let it through, or a decision; the first middleware
        that decides wins and the rest are not asked. Runs on the worker's
        loop for every record: keep it quick (no I/O).
        """
        return None

    def decides_for(self, task: Task[..., Any]) -> bool:
        """Whether :meth:`intake` may decide about records of ``task`` (asked once per task).

        The default is true when the class overrides ``intake``; a middleware that
        only looks at some tasks (those with its task option set) says so here, and
        the records of the others never reach it.
        """
        return type(self).intake is not Middleware.intake

    def child_started(self, app: Any) -> None:
        """Called in each worker child once the app is imported, before its first task."""

    def child_stopping(self, app: Any) -> None:
        """Called in a worker child when it stops cleanly (not when it is killed)."""

    def before_task(self, ctx: TaskContext) -> None:
        """Called in the child right before the task function runs."""

    def after_task(self, ctx: TaskContext, result: Any, exc: BaseException | None) -> None:
        """Called in the child after the task function returned or raised."""

    def child_batch_done(self, app: Any) -> None:
        """Called in a worker child after it ran a batch of tasks, before it reports them finished.

        Called before the ledger's flush and the report to the parent, so a
        middleware that sent records on the tasks' behalf (results) waits for
        their acknowledgement here: one wait per batch instead of one per task.
        """

    def on_retry(self, message: Message, delay_s: float, exc: BaseException | None) -> None:
        """Called in the worker parent when a failed task is scheduled again."""

    def task_not_run(self, message: Message, outcome: str, reason: str | None) -> None:
        """Called in the worker parent when a task will never run: ``outcome`` is ``revoked`` or ``expired``.

        Such records are not dead-lettered (see docs/scheduling.md); this is the place to
        tell whoever waits for them (results).
        """

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        """Called in the worker parent when a record goes to the dead-letter topic."""

    def task_finished(self, event: TaskEvent) -> None:
        """Called in the worker parent once per record it took, when its outcome is known.

        Runs on the worker's loop: keep it quick (count, don't do I/O).
        """

    def results_collected(self) -> None:
        """Called in the worker parent after it handled a round of results from its children.

        Each of them went through :meth:`task_finished` first: the place to write,
        as one, what those calls gathered. Runs on the worker's loop.
        """

    def tasks_dispatched(self, tasks: list[Dispatched]) -> None:
        """Called in the worker parent when records were handed to a child to run, in order.

        Runs on the worker's loop for every batch: keep it quick (no I/O).
        """

    def dispatch_room(self) -> int | None:
        """Called in the worker parent before it hands records to children: how many more may start.

        None means no limit; 0 holds every record (they stay queued, in order).
        Called on every dispatch: keep it cheap.
        """
        return None

    def commit_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata], final: bool
                       ) -> dict[TopicPartition, OffsetAndMetadata]:
        """Called in the worker parent before each commit: the offsets to commit instead.

        Called every ``commit_interval_ms`` even when ``offsets`` is empty (a
        place for periodic work). A middleware may lower an offset (a record
        below it is not durable yet) or leave a partition out; never raise one.
        ``final`` is true for the commit before partitions are released or the
        worker stops: a middleware may then block briefly to make records
        durable. An exception keeps the offsets as they were.
        """
        return offsets

    def offsets_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Called in the worker parent after a commit of ``{partition: offset}`` succeeded."""

    def commit_failed(self, exc: BaseException) -> None:
        """Called in the worker parent when a commit failed (rejected in a rebalance, or an error)."""

    def before_partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        """Called in the worker parent (on the rebalance thread) when partitions are newly assigned,
        before any of their records is read or dispatched: the place to restore state they need.

        It may block (the worker does not poll meanwhile; keep it below ``max_poll_interval_ms``).
        """

    def partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        """Called in the worker parent (on the rebalance thread) when partitions are assigned."""

    def partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        """Called in the worker parent when partitions were released (revoked, or lost)."""

    def worker_starting(self, worker: Any) -> None:
        """Called in the worker parent before its children start and it joins the group.

        Raising here stops the worker from starting (the built-in ledger check does).
        """

    def worker_started(self, worker: Any) -> None:
        """Called in the worker parent once it has joined the group."""

    def worker_stopping(self, worker: Any) -> None:
        """Called in the worker parent as it starts to stop, once no task runs any more.

        Tell background threads to stop here, without waiting for them: the
        worker then makes its final commit and leaves the group while they
        wind down side by side, and :meth:`worker_stopped` waits for them.
        Each may be blocked on an unreachable broker for ``send_timeout_ms``;
        waited for one after the other, they held a warm shutdown for 20 s.
        """

    def worker_stopped(self, worker: Any) -> None:
        """Called in the worker parent at shutdown."""


class MiddlewareStack:
    """Calls one hook on every middleware that implements it, isolating failures."""

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        self._items: list[Middleware] = list(middleware)
        self._hooked: dict[str, list[Middleware]] = {}
        self._deciders: dict[int, tuple[Any, list[Middleware]]] = {}
        self._options: dict[str, Any] | None = None

    def add(self, middleware: Middleware) -> None:
        self._items.append(middleware)
        self._changed()

    def _changed(self) -> None:
        self._hooked.clear()
        self._deciders.clear()
        self._options = None

    def remove(self, middleware: Middleware) -> None:
        """Take ``middleware`` out of the stack (``ValueError`` if it is not in it)."""
        self._items.remove(middleware)
        self._changed()

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def hooked(self, hook: str) -> list[Middleware]:
        """The middleware whose class overrides ``hook``, in order (cached until the next :meth:`add`)."""
        found = self._hooked.get(hook)
        if found is None:
            base = getattr(Middleware, hook)
            found = self._hooked[hook] = [m for m in self._items
                                          if getattr(type(m), hook, base) is not base or hook in getattr(m, "__dict__", {})]
        return found

    def has(self, hook: str) -> bool:
        """Whether any middleware implements ``hook`` (the worker skips building its arguments if not)."""
        return bool(self.hooked(hook))

    def task_options(self) -> dict[str, Any]:
        """Every task option the stack's middleware declare, with its default (cached: read per ``delay()``)."""
        options = self._options
        if options is None:
            options = {}
            for item in self._items:
                options.update(item.task_options)
            self._options = options
        return options

    def check_task_options(self, task_name: str, options: Mapping[str, Any]) -> None:
        """Let each middleware refuse a bad value of the options it owns (raises ConfigurationError)."""
        for item in self._items:
            given = {k: v for k, v in options.items() if k in item.task_options}
            if given:
                item.check_task_options(task_name, given)

    def deciders(self, task: Task[..., Any]) -> list[Middleware]:
        """The middleware whose ``intake`` decides about records of ``task`` (cached per task)."""
        cached = self._deciders.get(id(task))
        if cached is None or cached[0] is not task:
            cached = self._deciders[id(task)] = (task, [m for m in self.hooked("intake") if m.decides_for(task)])
        return cached[1]

    def decide(self, record: Intake) -> Decision | None:
        """The first ``intake`` decision of the stack, in order (``None``: run it).

        A middleware that raises rejects the record (it goes to the dead-letter
        topic, from where it can be replayed): the hook may be the one that
        would have refused it, and running a task cannot be undone.
        """
        for item in self.deciders(record.task):
            try:
                decision = item.intake(record)
            except Exception as exc:
                logger.exception("middleware %s.intake failed on %s@%d: dead-lettering the record",
                                 type(item).__name__, record.topic, record.offset)
                return Reject(f"{type(item).__name__}.intake raised {type(exc).__name__}: {exc}",
                              exc_type=exception_name(exc))
            if decision is not None:
                return decision
        return None

    def dispatch_room(self) -> int | None:
        """The fewest records any middleware lets start now (None: no limit)."""
        room: int | None = None
        for item in self.hooked("dispatch_room"):
            try:
                mine = item.dispatch_room()
            except Exception:
                logger.exception("middleware %s.dispatch_room failed", type(item).__name__)
                continue
            if mine is not None and (room is None or mine < room):
                room = max(0, mine)
        return room

    def commit_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata], final: bool
                       ) -> dict[TopicPartition, OffsetAndMetadata]:
        """The offsets to commit after every middleware's ``commit_offsets``, in order.

        A middleware that raises is logged and skipped. An offset is never raised above what the
        worker asked for: only the worker knows what finished.
        """
        for item in self.hooked("commit_offsets"):
            try:
                changed = item.commit_offsets(dict(offsets), final)
            except Exception:
                logger.exception("middleware %s.commit_offsets failed", type(item).__name__)
                continue
            offsets = {tp: om for tp, om in changed.items() if tp in offsets and om.offset <= offsets[tp].offset}
        return offsets

    def headers(self, message: Message, topic: str) -> list[tuple[str, bytes]]:
        """Headers the stack adds to an outgoing record (``enqueue_headers``), in order."""
        out: list[tuple[str, bytes]] = []
        for item in self.hooked("enqueue_headers"):
            extra = item.enqueue_headers(message, topic)
            if extra:
                out.extend(extra)
        return out

    def before(self, hook: str, *args: Any, strict: bool = False) -> None:
        for item in self.hooked(hook):
            self._call(item, hook, args, strict)

    def after(self, hook: str, *args: Any) -> None:
        for item in reversed(self.hooked(hook)):
            self._call(item, hook, args, False)

    @staticmethod
    def _call(item: Middleware, hook: str, args: tuple[Any, ...], strict: bool) -> None:
        try:
            getattr(item, hook)(*args)
        except Exception:
            if strict:
                raise
            logger.exception("middleware %s.%s failed", type(item).__name__, hook)
