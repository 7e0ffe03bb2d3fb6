"""One exception tree for ktasks.

Every error ktasks raises derives from :class:`KtasksError`. Errors that may go
away on their own (a broker that is briefly unreachable, a coordinator that is
moving) carry ``retriable = True`` so callers can decide without matching on
class names, as kafka-python does with its own errors.
"""

from __future__ import annotations


class KtasksError(Exception):
    """Base class of every ktasks error."""

    retriable: bool = False


class ConfigurationError(KtasksError, ValueError):
    """A setting is unknown, has the wrong type, or an invalid value."""


class UnsupportedOption(ConfigurationError):
    """A Celery option ktasks cannot honour on Kafka; the message says why and what ktasks does instead."""


class TaskNotRegistered(KtasksError, LookupError):
    """A message or a call names a task that is not registered with the app."""


class EncodeError(KtasksError, TypeError):
    """Task arguments cannot be encoded with msgpack.

    Also a :class:`TypeError`, so ``except TypeError`` in user code catches it.
    """


class DecodeError(KtasksError):
    """A record is not a valid ktasks message (garbage bytes, wrong version, missing fields)."""


class MessageTooLarge(KtasksError):
    """An encoded message is larger than the broker accepts; nothing was sent."""


class EnqueueError(KtasksError):
    """A message could not be published."""

    retriable = True


class AuthenticationFailed(EnqueueError):
    """Kafka rejected the client's credentials (SASL): retrying will not help until they change."""

    retriable = False


class BrokerUnavailable(EnqueueError):
    """The Kafka cluster could not be reached within the configured time."""

    retriable = True


class TopicError(KtasksError):
    """A topic could not be created, or exists with fewer partitions than configured."""


class DevBrokerError(KtasksError):
    """The local development broker could not be set up, started or stopped."""


class WorkerError(KtasksError):
    """The worker could not start or lost something it cannot recover from."""


class CommitError(KtasksError):
    """An offset commit failed.

    ``retriable`` tells whether trying again may succeed (coordinator moving,
    request timed out) or the partitions are no longer ours (rebalance,
    unknown member, illegal generation).
    """

    def __init__(self, message: str, retriable: bool) -> None:
        super().__init__(message)
        self.retriable = retriable


class TaskError(KtasksError):
    """Base for conditions raised inside a running task."""


class Retry(TaskError):
    """Raised by ``raise task.retry(...)`` to ask for another attempt."""

    def __init__(self, countdown_s: float | None = None, exc: BaseException | None = None) -> None:
        super().__init__(f"retry requested (countdown={countdown_s})")
        self.countdown_s = countdown_s
        self.exc = exc


class SoftTimeLimitExceeded(TaskError):
    """Raised inside a task when its ``soft_time_limit`` is reached."""


class TimeLimitExceeded(TaskError):
    """A task ran past its ``time_limit``; its child process was killed."""


class WorkerLost(TaskError):
    """The child process running a task died (signal, ``os._exit``, OOM kill)."""


class TaskCancelled(TaskError):
    """An ``async def`` task's coroutine was cancelled (not by a time limit); handled as a failure."""


class TaskExpired(TaskError):
    """A task was not started by its ``expires`` time: not run, recorded as ``expired`` (``get()`` raises it)."""


class TaskRevoked(TaskError):
    """A task was revoked before it started: not run, recorded as ``revoked`` (``get()`` raises it)."""


class Rejected(TaskError):
    """A middleware's intake hook refused a record (:class:`ktasks.Reject`); it is dead-lettered unrun."""


class PoisonMessage(TaskError):
    """A message started ``max_starts`` times without ever finishing."""


class DeadLetterError(KtasksError):
    """A dead-letter topic could not be read, replayed or purged."""

    retriable = True


class LedgerError(KtasksError):
    """The execution ledger could not be opened or written."""


class AppDatabaseError(KtasksError):
    """The application's database cannot be used for the outbox or claims (wrong mode, unknown driver)."""


class AlreadyClaimed(TaskError):
    """``ctx.claim(conn)`` found the task's idempotency key already claimed in that database.

    The execution it names already committed its writes; the worker records the
    task as already done and does not retry it.
    """

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} is already claimed: this task's writes were committed before")
        self.key = key


#: Module of the exceptions Python itself defines: named without it (``ValueError``).
_BUILTINS = "builtins"


def exception_name(exc: BaseException | type[BaseException]) -> str:
    """The name ktasks writes for an exception (or its class): ``module.QualName``.

    Built-in exceptions are named without their module, as Python's tracebacks
    name them (``ValueError``, never ``builtins.ValueError``); every other one,
    including those of ``__main__``, with its module. This is the one rule for
    the ``kafka_dlt-exception-fqcn`` and ``ktasks-last-error`` headers, the
    ledger's ``exc_type`` and the middleware's rejections.
    """
    cls = exc if isinstance(exc, type) else type(exc)
    module = cls.__module__
    return cls.__qualname__ if module == _BUILTINS else f"{module}.{cls.__qualname__}"


def normalize_exception_name(name: str) -> str:
    """``name`` as :func:`exception_name` writes it now, for names read back from older records.

    Workers before this rule wrote built-ins as ``builtins.ValueError``; reading
    both spellings as one keeps filters and listings of old dead letters working.
    """
    prefix = _BUILTINS + "."
    return name[len(prefix):] if name.startswith(prefix) else name


class ResultError(KtasksError):
    """Base for what ``get()`` raises besides the task's own failure and ``TimeoutError``."""


class ResultsDisabled(ResultError):
    """``get()`` on a task that publishes no result: nothing will ever arrive, so it raises at once."""


class ResultExpired(ResultError, LookupError):
    """The task's result was stored but is older than ``result_expires_s``: it is gone."""


class TaskFailed(KtasksError):
    """The task ended in failure (after its retries, or dead-lettered): raised by ``get()``.

    ``remote_type`` is the remote exception's qualified type name
    (``ValueError``; see :func:`exception_name`), ``remote_message`` its text and
    ``remote_traceback`` the worker's formatted traceback (empty when the task
    never ran: expired, poison, rejected). ``task_name`` and ``task_id`` name
    the task that failed: for a chain or a chord, the step or member that failed.
    """

    def __init__(self, task_name: str, task_id: str, remote_type: str, remote_message: str,
                 remote_traceback: str = "", reason: str | None = None) -> None:
        why = f" ({reason})" if reason and " " in reason else ""
        super().__init__(f"task {task_name}[{task_id}] failed: {remote_type}: {remote_message}{why}")
        self.task_name = task_name
        self.task_id = task_id
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        self.reason = reason
