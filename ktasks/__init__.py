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
import warnings

# kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy API when it is
# imported: about 200 DeprecationWarnings that are not the user's to fix. Silence exactly those,
# only for this import (every kafka module ktasks uses is loaded by it), not globally.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"(read_text|open_text) is deprecated", category=DeprecationWarning)
    import kafka  # noqa: F401

from .app import App  # noqa: E402
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
    TimeLimitExceeded,
    TopicError,
    UnsupportedOption,
    WorkerError,
    WorkerLost,
)
from .message import Message
from .middleware import Defer, Intake, Middleware, Reject, Skip
from .results import AsyncResult, GroupResult, Signature, chain, chord, group
from .settings import SETTINGS, Settings
from .task import EagerResult, SendHandle, SentRecord, Task, TaskContext

__all__ = [
    "App", "Task", "TaskContext", "SendHandle", "SentRecord", "EagerResult", "Message", "Middleware",
    "Intake", "Skip", "Defer", "Reject",
    "AsyncResult", "GroupResult", "Signature", "chain", "group", "chord", "TaskFailed", "ResultsDisabled",
    "ResultExpired",
    "Settings", "SETTINGS",
    "KtasksError", "ConfigurationError", "TaskNotRegistered", "EncodeError", "DecodeError",
    "MessageTooLarge", "EnqueueError", "AuthenticationFailed", "BrokerUnavailable", "TopicError", "WorkerError", "CommitError",
    "TaskError", "Retry", "SoftTimeLimitExceeded", "TimeLimitExceeded", "WorkerLost", "PoisonMessage",
    "TaskExpired", "TaskCancelled", "UnsupportedOption", "LedgerError", "Rejected",
]

__version__ = "0.1.0"

logging.getLogger(__name__).addHandler(logging.NullHandler())
