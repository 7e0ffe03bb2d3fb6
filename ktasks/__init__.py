"""ktasks: a Celery-style task framework backed by Apache Kafka.

    from ktasks import App

    app = App("billing")

    @app.task(max_retries=5)
    def charge(invoice_id: int) -> None: ...

    charge.delay(42)          # from a web request, a script or another task

and run ``ktasks worker -A billing:app -c 4``.
"""

from __future__ import annotations

import logging

from . import kafka as kafka  # first: imports kafka-python without its DeprecationWarnings (see there)
from .app import App
from .errors import (
    AuthenticationFailed,
    BrokerUnavailable,
    CommitError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    EnqueueError,
    KtasksError,
    LedgerError,
    MessageTooLarge,
    PoisonMessage,
    Rejected,
    ResultExpired,
    ResultsDisabled,
    Retry,
    SoftTimeLimitExceeded,
    TaskCancelled,
    TaskError,
    TaskExpired,
    TaskFailed,
    TaskNotRegistered,
    TaskRevoked,
    TimeLimitExceeded,
    TopicError,
    UnsupportedOption,
    WorkerError,
    WorkerLost,
)
from .message import Message
from .middleware import Defer, Dispatched, Intake, Middleware, Reject, Skip
from .results import AsyncResult, GroupResult, Signature, chain, chord, group
from .settings import SETTINGS, Settings
from .task import EagerResult, SendHandle, SentRecord, Task, TaskContext

__all__ = [
    "App", "Task", "TaskContext", "SendHandle", "SentRecord", "EagerResult", "Message", "Middleware",
    "Intake", "Skip", "Defer", "Reject", "Dispatched",
    "AsyncResult", "GroupResult", "Signature", "chain", "group", "chord", "TaskFailed", "ResultsDisabled",
    "ResultExpired",
    "Settings", "SETTINGS",
    "KtasksError", "ConfigurationError", "TaskNotRegistered", "EncodeError", "DecodeError",
    "MessageTooLarge", "EnqueueError", "AuthenticationFailed", "BrokerUnavailable", "TopicError", "WorkerError", "CommitError",
    "TaskError", "Retry", "SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLost", "PoisonMessage",
    "TaskExpired", "TaskRevoked", "TaskCancelled", "UnsupportedOption", "LedgerError", "Rejected",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
