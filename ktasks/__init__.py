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

from .app import App
from .errors import (
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
    Retry,
    SoftTimeLimitExceeded,
    TaskError,
    TaskExpired,
    TaskNotRegistered,
    TimeLimitExceeded,
    TopicError,
    UnsupportedOption,
    WorkerError,
    WorkerLost,
)
from .message import Message
from .middleware import Middleware
from .settings import SETTINGS, Settings
from .task import EagerResult, SendHandle, SentRecord, Task, TaskContext

__all__ = [
    "App", "Task", "TaskContext", "SendHandle", "SentRecord", "EagerResult", "Message", "Middleware",
    "Settings", "SETTINGS",
    "KtasksError", "ConfigurationError", "TaskNotRegistered", "EncodeError", "DecodeError",
    "MessageTooLarge", "EnqueueError", "BrokerUnavailable", "TopicError", "WorkerError", "CommitError",
    "TaskError", "Retry", "SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLost", "PoisonMessage",
    "TaskExpired", "UnsupportedOption", "LedgerError",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
