"""Tasks: the functions ``@app.task`` registers, and the handles ``delay()`` returns."""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from .celery_names import translate
from .errors import AlreadyClaimed, ConfigurationError, Retry
from .kafka.errors import KafkaError

if TYPE_CHECKING:
    import sqlite3

    from .app import App
    from .kafka import FutureRecordMetadata
    from .message import Message
    from .results.canvas import Signature

logger = logging.getLogger(__name__)

__all__ = ["Task", "TaskOptions", "TaskContext", "SendHandle", "EagerResult", "SentRecord"]

P = ParamSpec("P")
R = TypeVar("R")

@dataclass(frozen=True)
class TaskOptions:
    """Options given at decoration; ``None`` means "use the app's setting"."""

    name: str
    topic: str | None = None
    partitions: int | None = None
    bind: bool = False
    max_retries: int | None = None
    retry_for: tuple[type[BaseException], ...] = (Exception,)
    retry_backoff_s: float | None = None
    retry_backoff_max_s: float | None = None
    retry_jitter: bool | None = None
    soft_time_limit_s: float | None = None
    time_limit_s: float | None = None
    max_starts: int | None = None
    ledger_transaction: bool = False
    #: Options owned by middleware (``Middleware.task_options``), as given.
    extra: Mapping[str, Any] = field(default_factory=dict)

    def values(self) -> dict[str, Any]:
        """Every option by its ktasks name (core ones with their defaults, then the middleware-owned ones)."""
        core = {k: v for k, v in vars(self).items() if k not in ("name", "extra")}
        return {**core, **self.extra}

    @classmethod
    def build(cls, name: str, options: Mapping[str, Any],
              middleware_options: Mapping[str, Any] | None = None) -> TaskOptions:
        """Check and translate ``@app.task`` options; ``middleware_options`` are those the app's middleware own."""
        owned = dict(middleware_options or {})
        core = set(cls.__dataclass_fields__) - {"name", "extra"}
        # Celery's names are accepted (docs/celery.md); what Kafka cannot honour is refused.
        opts = translate(options, where=f"task {name!r}", known=core | set(owned))
        extra = {k: opts.pop(k) for k in list(opts) if k in owned and k not in core}
        retry_for = opts.get("retry_for", (Exception,))
        if isinstance(retry_for, type):
            retry_for = (retry_for,)
        opts["retry_for"] = tuple(retry_for)
        for key in ("max_retries", "partitions", "max_starts"):
            if opts.get(key) is not None and (not isinstance(opts[key], int) or opts[key] < 0):
                raise ConfigurationError(f"task {name!r}: {key} must be a non-negative int")
        for key in ("retry_backoff_s", "retry_backoff_max_s", "soft_time_limit_s", "time_limit_s"):
            if opts.get(key) is not None and (not isinstance(opts[key], (int, float)) or opts[key] < 0):
                raise ConfigurationError(f"task {name!r}: {key} must be a non-negative number of seconds")
        if opts.get("ledger_transaction") and not opts.get("bind"):
            raise ConfigurationError(f"task {name!r}: ledger_transaction=True needs bind=True "
                                     "(the transaction is ctx.ledger)")
        return cls(name=name, extra=extra, **opts)


@dataclass
class TaskContext:
    """What a bound task (``bind=True``) receives as its first argument.

    For tasks declared with ``ledger_transaction=True``, ``ledger`` is the
    SQLite connection whose open transaction will also record this
    execution's success: writes made through it commit together with the
    success record, or not at all. The transaction holds the ledger's write
    lock while the task runs (so it never fails with ``database is locked``),
    so keep such tasks short.
    """

    task: Task[..., Any]
    message: Message
    topic: str | None = None
    partition: int | None = None
    offset: int | None = None
    ledger: sqlite3.Connection | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def id(self) -> str:
        return self.message.id

    @property
    def attempt(self) -> int:
        return self.message.attempt

    @property
    def idempotency_key(self) -> str:
        return self.message.ledger_key

    def retry(self, countdown_s: float | None = None, exc: BaseException | None = None) -> Retry:
        return self.task.retry(countdown_s=countdown_s, exc=exc)

    def claim(self, conn: Any) -> None:
        """Claim this execution in ``conn``'s open transaction (a DB-API connection to your database).

        Inserts :attr:`idempotency_key` into that database's ``ktasks_claims``
        table, so it commits with the task's own writes, or not at all. If the
        key is already claimed (a redelivery whose first run committed), raises
        :class:`~ktasks.errors.AlreadyClaimed`: the worker records the task as
        done and does not retry it. Call it before writing.
        """
        from .appdb.claims import claim

        claim(conn, self.idempotency_key, self.task.name, self.id)


@dataclass(frozen=True)
class SentRecord:
    """Where the broker stored a message."""

    topic: str
    partition: int
    offset: int


class SendHandle:
    """Returned by ``delay()``/``apply_async()``: the task id and the pending broker acknowledgement."""

    def __init__(self, task_id: str, topic: str, future: FutureRecordMetadata, app: App,
                 task_name: str | None = None) -> None:
        self.id = task_id
        self.topic = topic
        self.task_name = task_name
        self._future = future
        self._app = app
        self._result: Any = None

    @property
    def future(self) -> FutureRecordMetadata:
        """The producer's send future (acknowledged when the broker stored the message)."""
        return self._future

    @property
    def result(self) -> Any:
        """The task's :class:`~ktasks.results.AsyncResult` (waits on this process's reply partition)."""
        if self._result is None:
            from .results.handles import AsyncResult
            from .results.replies import _readers

            reader = _readers.get(id(self._app))
            enabled = reader is not None and reader.app is self._app and reader.expects(self.id)
            self._result = AsyncResult(self._app, self.id, task_name=self.task_name, via_reply=True,
                                       enabled=enabled)
        return self._result

    def get(self, timeout: float | None = None) -> Any:
        """The task's return value (see :meth:`ktasks.results.AsyncResult.get`); needs results turned on."""
        return self.result.get(timeout=timeout)

    def ready(self) -> bool:
        """Whether the task finished (see :meth:`ktasks.results.AsyncResult.ready`)."""
        return bool(self.result.ready())

    @property
    def status(self) -> str:
        """``PENDING``, ``SUCCESS`` or ``FAILURE``."""
        return str(self.result.status)

    def wait_sent(self, timeout: float | None = None) -> SentRecord:
        """Block until the broker acknowledged the message (``acks=all``).

        Raises :class:`~ktasks.errors.EnqueueError` (``BrokerUnavailable`` on
        timeouts) if it was not stored. ``timeout`` defaults to the app's
        ``send_timeout_ms``.
        """
        if timeout is None:
            timeout = self._app.settings.send_timeout_ms / 1000.0
        try:
            md = self._future.get(timeout=timeout)
        except KafkaError as exc:
            from .kafka.producer import translate_send_error

            raise translate_send_error(exc, self._app.settings) from exc
        return SentRecord(md.topic, md.partition, md.offset)

    def revoke(self) -> None:
        """Revoke this task: if it has not started, it will not run (see ``App.revoke``)."""
        self._app.revoke(self.id)

    @property
    def sent(self) -> bool:
        return bool(self._future.is_done and self._future.succeeded())

    def __repr__(self) -> str:
        return f"<SendHandle {self.id} topic={self.topic}>"


class EagerResult:
    """Returned in eager mode: the task already ran, inline, as a worker would have run it.

    ``result`` is the return value (of the last attempt, or the ledger's
    recorded one when ``skipped``); ``exception`` the last attempt's
    exception if the task did not succeed; ``attempts`` how many times it
    ran; ``retry_delays_s`` the delay a worker would have waited before each
    retry; ``dead_letter_reason`` what a worker would have written in
    ``ktasks-dlt-reason`` (``None`` if it succeeded); ``skipped`` whether the
    ledger found the idempotency key already succeeded, so it did not run.
    """

    def __init__(self, task_id: str, result: Any = None, exc: BaseException | None = None,
                 app: App | None = None) -> None:
        self.id = task_id
        self._app = app
        self.result = result
        self.exception = exc
        self.attempts = 0
        self.retry_delays_s: list[float] = []
        self.dead_letter_reason: str | None = None
        self.skipped = False

    @property
    def retries(self) -> int:
        return len(self.retry_delays_s)

    @property
    def dead_lettered(self) -> bool:
        return self.dead_letter_reason is not None

    def successful(self) -> bool:
        return self.exception is None and self.dead_letter_reason is None

    def wait_sent(self, timeout: float | None = None) -> None:
        """Nothing is sent in eager mode; like a send, this does not raise the task's exception."""

    def get(self, timeout: float | None = None) -> Any:
        """The return value; raises the task's exception if it ended in the dead-letter topic.

        For a task that stores results (``store_result``/``store_results``),
        exactly what a worker's result gives: ``TaskFailed`` for a failure.
        """
        record = self._stored()
        if record is not None:
            return record.outcome()
        if self.exception is not None:
            raise self.exception
        return self.result

    def _stored(self) -> Any:
        if self._app is None:
            return None
        from .results.middleware import results_middleware

        return results_middleware(self._app).eager_results.get(self.id)

    def ready(self) -> bool:
        return True

    @property
    def status(self) -> str:
        return "SUCCESS" if self.successful() else "FAILURE"

    def __repr__(self) -> str:
        state = "skipped" if self.skipped else f"dead-lettered ({self.dead_letter_reason})" \
            if self.dead_lettered else "succeeded"
        return f"<EagerResult {self.id} {state} attempts={self.attempts}>"


class Task(Generic[P, R]):
    """A registered task. Call it to run in-process; ``delay`` to enqueue."""

    def __init__(self, app: App, fn: Callable[P, R], options: TaskOptions) -> None:
        self.app = app
        self.fn = fn
        self.options = options
        self.name = options.name
        functools.update_wrapper(self, fn)

    @property
    def topic(self) -> str:
        return self.options.topic or self.app.default_topic

    @property
    def is_async(self) -> bool:
        """An ``async def`` task: a worker runs it on its children's event loops."""
        return inspect.iscoroutinefunction(self.fn)

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> R:
        return self.fn(*args, **kwargs)

    def option(self, name: str, default: Any = None) -> Any:
        """A middleware-owned option of this task (``@app.task(rate_limit=...)``), else its declared default."""
        if name in self.options.extra:
            return self.options.extra[name]
        return self.app.middleware.task_options().get(name, default)

    def run(self, ctx: TaskContext) -> Any:
        """Run the function for a message (used by the worker and eager mode)."""
        msg = ctx.message
        fn: Callable[..., Any] = self.fn
        if not self.options.bind:
            return fn(*msg.args, **msg.kwargs)
        try:
            return fn(ctx, *msg.args, **msg.kwargs)
        except AlreadyClaimed as exc:
            # Its writes committed in an earlier run (ctx.claim): done, not failed.
            logger.info("task %s[%s] already claimed in the application database (%s): recorded as done",
                        msg.task, msg.id, exc.key)
            return None

    def s(self, *args: Any, **kwargs: Any) -> Signature:
        """A signature of this task (for ``chain``, ``group``, ``chord``); a chain prepends the previous result."""
        from .results.canvas import Signature

        return Signature(self, args, kwargs)

    def si(self, *args: Any, **kwargs: Any) -> Signature:
        """An immutable signature: a chain does not prepend the previous result."""
        from .results.canvas import Signature

        return Signature(self, args, kwargs, immutable=True)

    def delay(self, *args: P.args, **kwargs: P.kwargs) -> SendHandle | EagerResult:
        """Enqueue a call with these arguments."""
        return self.apply_async(args=args, kwargs=kwargs)

    def apply_async(
        self,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        key: str | bytes | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        topic: str | None = None,
        countdown_s: float | None = None,
        eta: Any = None,
        expires: Any = None,
        **options: Any,
    ) -> SendHandle | EagerResult:
        """Enqueue a call.

        ``key`` routes the message: the same key always lands on the same
        partition and runs in order. ``idempotency_key`` names this task's
        execution in the ledger (default: the task id): a key that already
        succeeded for this task never runs it again; other tasks given the same
        key are not affected. ``countdown_s`` delays the first run; ``eta`` (a
        timezone-aware datetime) gives its time instead, however far ahead
        (docs/scheduling.md). ``expires_s`` (seconds from now), or
        ``expires`` (seconds, a timedelta or an aware datetime): a task not
        started by then is not run, and the ledger records it as ``expired``.
        Celery's names (``countdown``, ``queue``, ...) are accepted; see
        docs/celery.md.
        """
        return self.app.send_task(
            self.name, args=args, kwargs=kwargs, key=key, task_id=task_id,
            idempotency_key=idempotency_key, headers=headers, topic=topic,
            countdown_s=countdown_s, eta=eta, expires=expires, **options,
        )

    def delay_on_commit(self, *args: P.args, **kwargs: P.kwargs) -> None:
        """Django: ``delay()`` once the current transaction commits, nothing if it rolls back.

        A crash between the commit and the send loses the task; the outbox
        (``ktasks.contrib.django.outbox``) does not. See docs/outbox.md.
        """
        from .contrib.django import delay_on_commit

        delay_on_commit(self, *args, **kwargs)

    async def delay_async(self, *args: P.args, **kwargs: P.kwargs) -> SendHandle | EagerResult:
        """``delay()`` for async code: the send runs in a thread, so the event loop is never blocked."""
        return await self.aapply_async(args=args, kwargs=kwargs)

    async def aapply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                           **options: Any) -> SendHandle | EagerResult:
        """``apply_async()`` for async code (same options), without blocking the event loop.

        ``delay()`` usually returns at once, but it blocks while the producer
        fetches metadata or its buffer is full (up to ``send_timeout_ms``).
        """
        call = functools.partial(self.apply_async, args, kwargs, **options)
        return await asyncio.get_running_loop().run_in_executor(None, call)

    def retry(self, countdown_s: float | None = None, exc: BaseException | None = None) -> Retry:
        """Build the exception to ``raise`` from inside a task to ask for another attempt."""
        return Retry(countdown_s=countdown_s, exc=exc)

    # -- policy ---------------------------------------------------------------
    def max_retries(self) -> int:
        v = self.options.max_retries
        return self.app.settings.max_retries if v is None else v

    def max_starts(self) -> int:
        v = self.options.max_starts
        return self.app.settings.max_starts if v is None else v

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether a failure on this attempt (0-based) earns another attempt."""
        if attempt >= self.max_retries():
            return False
        if isinstance(exc, Retry):
            return True
        return isinstance(exc, self.options.retry_for)

    def retry_delay_s(self, exc: BaseException, attempt: int) -> float:
        """The delay before retrying after ``exc``: ``ctx.retry(countdown_s=...)``'s, else the backoff."""
        countdown = exc.countdown_s if isinstance(exc, Retry) else None
        return countdown if countdown is not None else self.backoff_s(attempt)

    def dead_letter_reason(self, exc: BaseException) -> str:
        """The dead-letter reason when ``exc`` earns no retry (``should_retry`` said no)."""
        retriable = isinstance(exc, Retry) or isinstance(exc, self.options.retry_for)
        return "retries-exhausted" if retriable else "not-retriable"

    def backoff_s(self, attempt: int, rng: random.Random | None = None) -> float:
        """Delay before retry number ``attempt + 1``: exponential, capped, with full jitter."""
        s = self.app.settings
        base = self.options.retry_backoff_s
        base = s.retry_backoff_ms / 1000.0 if base is None else base
        cap = self.options.retry_backoff_max_s
        cap = s.retry_backoff_max_ms / 1000.0 if cap is None else cap
        jitter = self.options.retry_jitter
        jitter = s.retry_jitter if jitter is None else jitter
        delay: float = min(cap, base * (2 ** attempt))
        if jitter:
            # Full jitter, but never below half the delay, so delays still grow.
            delay = delay / 2 + (rng or random).random() * delay / 2
        return delay

    def __repr__(self) -> str:
        return f"<Task {self.name}>"
