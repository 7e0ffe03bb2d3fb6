"""The application object: settings, the task registry and the enqueue path."""

from __future__ import annotations

import contextlib
import inspect
import logging
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, overload

from .celery_names import absolute_time, translate
from .errors import ConfigurationError, EncodeError, MessageTooLarge, TaskNotRegistered
from .headers import H_ORIGIN_TOPIC
from .kafka.errors import KafkaError
from .kafka.producer import ProducerHolder, translate_send_error
from .message import Message, decode, encode, headers_of, new_id
from .middleware import Middleware, MiddlewareStack, default_middleware
from .settings import Settings
from .task import EagerResult, SendHandle, Task, TaskOptions

if TYPE_CHECKING:
    from .appdb.outbox import Outbox
    from .results.handles import AsyncResult
    from .schedule.periodic import PeriodicEntry

logger = logging.getLogger(__name__)

__all__ = ["App", "OutgoingRecord"]

F = TypeVar("F", bound=Callable[..., Any])

_apps: weakref.WeakSet[App] = weakref.WeakSet()


@dataclass(frozen=True)
class OutgoingRecord:
    """A task call encoded and checked, ready for Kafka: what ``send_task`` sends and the outbox stores."""

    message: Message
    topic: str  # where it goes: the task topic, or a delay tier's retry topic for a countdown
    task_topic: str
    key: bytes | None
    value: bytes
    headers: list[tuple[str, bytes]]
    partitions: int | None  # the task's own partition count, for topic creation


class App:
    """A ktasks application: ``app = App("billing")``, then ``@app.task``.

    Settings come from keyword arguments, then ``KTASKS_*`` environment
    variables, then defaults (see docs/configuration.md); unknown settings
    are rejected.
    """

    def __init__(self, name: str, bootstrap_servers: str | None = None, *,
                 middleware: Iterable[Middleware] = (), **settings: Any) -> None:
        if not name or not isinstance(name, str):
            raise ConfigurationError("App name must be a non-empty str")
        if bootstrap_servers is not None:
            settings["bootstrap_servers"] = bootstrap_servers
        self.name = name
        self.settings = Settings(settings)
        self.tasks: dict[str, Task[..., Any]] = {}
        #: Periodic entries by name (``add_periodic_task``), run by ``ktasks worker --beat`` or ``ktasks beat``.
        self.periodic_tasks: dict[str, PeriodicEntry] = {}
        from .results.middleware import ResultsMiddleware
        from .schedule import default_middleware as scheduling_middleware

        # Revocation and expiry first: a revoked task is never offered to anyone else. Then results,
        # so its task option (store_result) exists before any task is declared.
        self.middleware = MiddlewareStack([*scheduling_middleware(), ResultsMiddleware(self), *default_middleware(),
                                           *middleware])
        self.client_id = self.settings.client_id or f"ktasks-{name}"
        self.producer = ProducerHolder(self.settings, self.client_id)
        from .topics import TopicManager

        self.topics = TopicManager(self.settings, self.client_id)
        self._ensured: set[str] = set()
        self._ensure_lock = threading.Lock()
        self._tracked: list[Any] | None = None
        self._captured: list[Any] | None = None
        from .eager import EagerLedger

        #: Eager mode's ledger (a private temporary file); ``eager_ledger.reset()`` forgets it.
        self.eager_ledger = EagerLedger()
        _apps.add(self)

    @contextlib.contextmanager
    def track_sends(self) -> Iterator[list[Any]]:
        """Collect the send futures of every record this process publishes inside the block.

        The worker's child runs each task inside one, so the task counts as finished only
        once every record it enqueued is acknowledged.
        """
        tracked: list[Any] = []
        self._tracked = tracked
        try:
            yield tracked
        finally:
            self._tracked = None

    @contextlib.contextmanager
    def capture_sends(self) -> Iterator[list[Any]]:
        """Hold every record this process publishes inside the block instead of sending it.

        A transactional worker's child runs each task inside one: the records
        (:class:`ktasks.kafka.transactions.CapturedSend`) go back to the parent,
        which sends them in the transaction that commits the task's offset.
        """
        captured: list[Any] = []
        self._captured = captured
        try:
            yield captured
        finally:
            self._captured = None

    def _produce(self, topic: str, value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]],
                 partition: int | None = None, task_id: str | None = None) -> Any:
        """Send one record (or hold it, inside :meth:`capture_sends`); returns its future."""
        if self._captured is not None:
            from .kafka.transactions import CapturedSend

            held = CapturedSend(topic, value, key, headers, partition)
            self._captured.append(held)
            return held
        try:
            future = self.producer.send(topic, value=value, key=key, headers=headers, partition=partition,
                                        task_id=task_id)
        except KafkaError as exc:
            raise translate_send_error(exc, self.settings) from exc
        if self._tracked is not None:
            self._tracked.append(future)
        return future

    # -- naming ---------------------------------------------------------------
    @property
    def default_topic(self) -> str:
        return self.settings.default_topic or f"{self.name}.tasks"

    @property
    def group_id(self) -> str:
        return self.settings.group_id or self.name

    def dead_letter_topic(self, topic: str) -> str:
        return topic + self.settings.dead_letter_suffix

    def retry_topic(self, topic: str, tier_ms: int) -> str:
        return f"{topic}{self.settings.retry_suffix}-{tier_ms}ms"

    def delay_tier_ms(self, delay_s: float) -> int:
        """The retry tier for a delay: the largest tier not above it (else the smallest)."""
        tiers = sorted(self.settings.retry_tiers_ms)
        return max([t for t in tiers if t <= delay_s * 1000] or tiers[:1])

    def retry_topics(self, topic: str) -> list[str]:
        return [self.retry_topic(topic, t) for t in self.settings.retry_tiers_ms]

    def task_topics(self) -> list[str]:
        """Every topic a registered task is sent to by default."""
        return sorted({t.topic for t in self.tasks.values()} or {self.default_topic})

    # -- registry -------------------------------------------------------------
    @overload
    def task(self, fn: F, /) -> Task[..., Any]: ...

    @overload
    def task(self, fn: None = None, /, **options: Any) -> Callable[[F], Task[..., Any]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task; usable bare (``@app.task``) or with options.

        Options: ``name`` (default ``module.qualname``), ``topic``,
        ``partitions``, ``bind``, ``max_retries``, ``retry_for``,
        ``retry_backoff_s``, ``retry_backoff_max_s``, ``retry_jitter``,
        ``soft_time_limit_s``, ``time_limit_s``, ``max_starts``.
        """

        def register(func: Callable[..., Any]) -> Task[..., Any]:
            name = options.pop("name", None) or f"{func.__module__}.{func.__qualname__}"
            if "<locals>" in name and "name" not in options:
                # Still allowed (tests define tasks inside functions), but a worker can
                # only run it if the module defines it identically at import time.
                logger.debug("task %s is defined in a function", name)
            opts = TaskOptions.build(name, options, self.middleware.task_options())
            self.middleware.check_task_options(name, opts.values())
            if opts.ledger_transaction and inspect.iscoroutinefunction(func):
                raise ConfigurationError(f"task {name!r}: ledger_transaction=True is not supported for async def "
                                         "tasks (the SQLite transaction would be held across awaits)")
            existing = self.tasks.get(name)
            if existing is not None and existing.fn.__code__ is not getattr(func, "__code__", None):
                logger.warning("task %s registered twice; the later definition wins", name)
            t: Task[..., Any] = Task(self, func, opts)
            self.tasks[name] = t
            return t

        if fn is not None:
            return register(fn)
        return register

    def get_task(self, name: str) -> Task[..., Any]:
        try:
            return self.tasks[name]
        except KeyError:
            raise TaskNotRegistered(f"task {name!r} is not registered with app {self.name!r}") from None

    def add_middleware(self, middleware: Middleware) -> None:
        self.middleware.add(middleware)

    # -- enqueue --------------------------------------------------------------
    def send_task(
        self,
        name: str,
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
        attempt: int = 0,
        meta: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> SendHandle | EagerResult:
        """Enqueue a task by name. Used by ``Task.apply_async`` (see it for the options)."""
        record = self.build_record(name, args, kwargs, key=key, task_id=task_id,
                                   idempotency_key=idempotency_key, headers=headers, topic=topic,
                                   countdown_s=countdown_s, eta=eta, expires=expires, attempt=attempt,
                                   meta=meta, **options)
        if self.settings.eager:
            return self._run_eager(decode(record.value), record.task_topic)
        topic = record.topic
        if topic not in self._ensured:
            self.ensure_topics([topic], partitions=record.partitions)
        future = self._produce(topic, record.value, record.key, record.headers, task_id=record.message.id)
        self.middleware.after("after_enqueue", record.message, topic)
        return SendHandle(record.message.id, topic, future, self, task_name=name)

    def build_record(
        self,
        name: str,
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
        attempt: int = 0,
        meta: Mapping[str, Any] | None = None,
        **options: Any,
    ) -> OutgoingRecord:
        """Encode and check a task call as ``send_task`` would, without sending it.

        Runs the ``before_enqueue`` middleware and raises what ``delay()``
        raises (``EncodeError``, ``MessageTooLarge``, ``TaskNotRegistered``).
        The transactional outbox stores the result and publishes it later.
        """
        if "expires_s" in options:
            expires_s = options.pop("expires_s")
            if expires is not None and expires_s is not None:
                raise ConfigurationError(f"task {name!r}: give expires_s or expires, not both")
            if expires_s is not None and (isinstance(expires_s, bool) or not isinstance(expires_s, (int, float))):
                raise ConfigurationError(f"task {name!r}: expires_s must be a number of seconds, got {expires_s!r}")
            expires = expires if expires_s is None else expires_s
        if options:
            topic, countdown_s = _call_options(name, options, topic, countdown_s)
        task = self.tasks.get(name)
        if topic is None:
            topic = task.topic if task is not None else self.default_topic
        if self.settings.eager and task is None:
            raise TaskNotRegistered(f"task {name!r} is not registered with app {self.name!r}")
        if not isinstance(args, (list, tuple)):
            raise EncodeError(f"task {name!r}: args must be a list or tuple, got {type(args).__name__}")
        now = time.time()
        due, expires_at = _schedule(name, now, countdown_s, eta, expires)
        countdown_s = None if due is None else due - now
        message = Message(
            task=name, args=list(args), kwargs=dict(kwargs or {}), id=task_id or new_id(),
            attempt=attempt, idempotency_key=idempotency_key, created=now, due=due, expires=expires_at,
            meta=dict(meta or {}),
        )
        self.middleware.before("before_enqueue", message, topic, strict=True)
        value = encode(message)
        if key is None and idempotency_key is not None:
            # The same idempotency key lands on the same partition, whose ledger changelog
            # then tells any host that it already ran (docs/ledger.md#the-changelog).
            key = idempotency_key
        kbytes = key.encode() if isinstance(key, str) else key
        if kbytes is not None and not isinstance(kbytes, bytes):
            raise EncodeError(f"task {name!r}: key must be str or bytes, got {type(key).__name__}")
        hdrs = headers_of(message, headers)
        if self.middleware.has("enqueue_headers"):
            hdrs.extend(self.middleware.headers(message, topic))
        size = len(value) + 128
        if kbytes:
            size += len(kbytes)
        for hkey, hvalue in hdrs:
            size += len(hkey) + len(hvalue)
        if size > self.settings.max_message_bytes:
            raise MessageTooLarge(
                f"task {name!r}: message is {size} bytes, over max_message_bytes="
                f"{self.settings.max_message_bytes}; nothing was sent"
            )
        task_topic = topic
        partitions = task.options.partitions if task else None
        if countdown_s and countdown_s * 1000 > max(self.settings.retry_tiers_ms):
            # Beyond the largest tier: a tier would hold its partition for longer than its delay.
            # The scheduled topic keeps it, keyed by task id, until its owner enqueues it.
            from .schedule.eta import H_SCHEDULED_KEY, ensure_scheduled_topic

            hdrs.append((H_ORIGIN_TOPIC, topic.encode()))
            if kbytes is not None:
                hdrs.append((H_SCHEDULED_KEY, kbytes))
            topic = ensure_scheduled_topic(self) if not self.settings.eager else f"{self.name}.scheduled"
            kbytes, partitions = message.id.encode(), self.settings.scheduled_partitions
        elif countdown_s and countdown_s > 0:
            # A delayed task waits in the retry topic of its delay tier, like a retry: the
            # worker holds that partition until it is due, and the task topic never blocks.
            hdrs.append((H_ORIGIN_TOPIC, topic.encode()))
            topic = self.retry_topic(topic, self.delay_tier_ms(countdown_s))
        return OutgoingRecord(message, topic, task_topic, kbytes, value, hdrs, partitions)

    def outbox(self, conn: Any, **options: Any) -> Outbox:
        """Enqueue through ``conn``'s open transaction instead of straight to Kafka.

        ``app.outbox(conn).delay(task, *args)`` writes the checked, encoded
        call into the ``ktasks_outbox`` table of that DB-API connection; it
        becomes a Kafka message only if the transaction commits, once a relay
        (``ktasks relay``) publishes it. See docs/outbox.md.
        """
        from .appdb.outbox import Outbox

        return Outbox(self, conn, **options)

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None,
                 headers: list[tuple[str, bytes]] | None = None, partition: int | None = None) -> Any:
        """Publish already-encoded bytes (retries, dead letters, replays); returns the send future."""
        return self._produce(topic, value, key, headers or [], partition)

    def _run_eager(self, message: Message, topic: str) -> EagerResult:
        from .eager import run_eager

        result = run_eager(self, message, topic)
        if result.exception is not None and self.settings.eager_propagates:
            raise result.exception
        return result

    def ensure_topics(self, topics: Iterable[str], partitions: int | None = None) -> None:
        """Create topics this process has not checked yet (no-op when ``auto_create_topics`` is off)."""
        if not self.settings.auto_create_topics:
            return
        todo = [t for t in topics if t not in self._ensured]
        if not todo:
            return
        with self._ensure_lock:
            todo = [t for t in todo if t not in self._ensured]
            if todo:
                self.topics.ensure(todo, partitions=partitions)
                self._ensured.update(todo)

    def forget_topics(self, topics: Iterable[str]) -> None:
        """Forget that ``topics`` were checked, so the next ``ensure_topics`` creates them if missing."""
        names = set(topics)
        with self._ensure_lock:
            self._ensured -= names
        self.topics.forget(names)

    def result(self, task_id: str) -> AsyncResult:
        """The result of ``task_id`` from any process: ``app.result(id).get(timeout=...)`` (docs/results.md)."""
        from .results.handles import AsyncResult

        return AsyncResult(self, task_id)

    def add_periodic_task(self, name: str, schedule: float | str, task: Any, *, args: Sequence[Any] = (),
                          kwargs: Mapping[str, Any] | None = None, catch_up: bool = False, tz: str = "UTC",
                          topic: str | None = None) -> PeriodicEntry:
        """Declare a periodic task: ``task`` (a task or its name) with ``args``/``kwargs`` on ``schedule``.

        ``schedule``: seconds (slots at whole multiples since the epoch) or a
        cron string in time zone ``tz``. Exactly one runner fires each slot,
        whatever the number of ``ktasks worker --beat`` and ``ktasks beat``
        processes. ``catch_up``: a slot missed while no runner ran fires once on
        recovery (True) or not at all (False). See docs/scheduling.md.
        """
        from .schedule.periodic import add_periodic_task

        return add_periodic_task(self, name, schedule, task, args=args, kwargs=kwargs, catch_up=catch_up, tz=tz,
                                 topic=topic)

    def revoke(self, *task_ids: str, timeout_s: float | None = None) -> list[str]:
        """Revoke tasks by id: one that has not started will not run (ledger state ``revoked``).

        Works for queued tasks, countdowns and ETAs of any length, and for
        tasks not yet enqueued. Blocks until Kafka stored the revocations;
        see docs/scheduling.md.
        """
        from .schedule.revoke import revoke

        return revoke(self, task_ids, timeout_s=timeout_s)

    def flush(self, timeout_s: float | None = None) -> None:
        """Wait until every message sent from this process was acknowledged."""
        self.producer.flush(timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        """Flush and close this process's Kafka clients (and eager mode's ledger)."""
        from .results.replies import close_reader

        close_reader(self)
        self.producer.close(timeout_s)
        self.topics.close()
        self.eager_ledger.reset()

    def __repr__(self) -> str:
        return f"<App {self.name} tasks={len(self.tasks)}>"


_CALL_OPTIONS = frozenset({"topic", "countdown_s"})


def _call_options(name: str, options: Mapping[str, Any], topic: str | None,
                  countdown_s: float | None) -> tuple[str | None, float | None]:
    """Celery's call options (``queue=``, ``countdown=``) as ktasks' ``topic`` and ``countdown_s``."""
    given = translate(options, where=f"task {name!r}: apply_async", known=_CALL_OPTIONS)
    for canonical, value in (("topic", topic), ("countdown_s", countdown_s)):
        if canonical in given and value is not None:
            raise ConfigurationError(f"task {name!r}: apply_async: {canonical!r} given twice, under "
                                     "ktasks' and Celery's names")
    return given.get("topic", topic), given.get("countdown_s", countdown_s)


def _schedule(name: str, now: float, countdown_s: float | None, eta: Any,
              expires: Any) -> tuple[float | None, float | None]:
    """``(due, expires)`` as epoch seconds from ``countdown_s``/``eta`` and ``expires``."""
    if countdown_s is not None and eta is not None:
        raise ConfigurationError(f"task {name!r}: give countdown or eta, not both")
    if countdown_s is not None and (isinstance(countdown_s, bool) or not isinstance(countdown_s, (int, float))):
        raise ConfigurationError(f"task {name!r}: countdown must be a number of seconds, got {countdown_s!r}")
    due = absolute_time(eta, "eta") if eta is not None else (now + countdown_s if countdown_s else None)
    if due is not None and due <= now:
        due = None  # an eta in the past: due now, as in Celery
    expires_at = None if expires is None else absolute_time(expires, "expires", now)
    if expires_at is not None and expires_at <= (due or now):
        raise ConfigurationError(f"task {name!r}: expires is not after the time the task is due, so it "
                                 "would never run")
    return due, expires_at


def _reset_after_fork() -> None:
    # A lock another thread held at fork time would stay held forever in the child.
    for app in list(_apps):
        app._ensure_lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)
