"""Dead-lettering: why a record goes to the dead-letter topic, and what its dead letter records.

Every path to the dead-letter topic names its reason here: a record that
cannot be decoded or names no registered task (decided at intake), one an
intake middleware rejected, a task out of retries (:mod:`.retries` gives
the reason), a poison message (:mod:`.idempotency`), an expired one, a
copy too large for the broker, and a finished record whose commit failed.
The record format itself (headers, sizes, publishing) is
:mod:`ktasks.deadletter`'s.
"""

from __future__ import annotations

import logging
from typing import Any

from ..deadletter import DeadLetter
from ..errors import DecodeError
from .base import Middleware

logger = logging.getLogger(__name__)

__all__ = ["DeadLettering", "UNDECODABLE", "UNREGISTERED", "REJECTED", "POISON", "TOO_LARGE", "COMMIT_FAILED",
           "record_of", "undecodable", "unregistered", "commit_failed"]

UNDECODABLE = "undecodable"
UNREGISTERED = "unregistered"
REJECTED = "rejected"
POISON = "poison"
TOO_LARGE = "too-large"
COMMIT_FAILED = "commit-failed"


def record_of(job: Any, reason: str, exc_type: str | None, exc_message: str | None, stacktrace: str | None,
              *, group: str, host: str) -> DeadLetter:
    """The dead letter of ``job`` (a worker job: its record, origin topic and decoded message, if any)."""
    r = job.record
    return DeadLetter(
        value=r.value, key=r.key, headers=list(r.headers or []), topic=r.topic, partition=r.partition,
        offset=r.offset, timestamp_ms=r.timestamp, timestamp_type=r.timestamp_type,
        origin_topic=job.origin_topic, reason=reason,
        exc_type=exc_type, exc_message=exc_message, stacktrace=stacktrace,
        attempts=(job.message.attempt + 1) if job.message else 0, group=group, host=host,
    )


def undecodable(exc: DecodeError) -> tuple[str, str, str]:
    """(reason, exception type, message) of a record whose value is not a ktasks message."""
    return UNDECODABLE, "ktasks.errors.DecodeError", str(exc)


def unregistered(task_name: str, app_name: str) -> tuple[str, str, str]:
    """(reason, exception type, message) of a record naming a task this app does not have."""
    return (UNREGISTERED, "ktasks.errors.TaskNotRegistered",
            f"task {task_name!r} is not registered with app {app_name!r}")


def commit_failed() -> tuple[str, str, str]:
    """(reason, exception type, message) of a finished record whose offset could not be committed."""
    return COMMIT_FAILED, "ktasks.errors.CommitError", "the task finished but its offset could not be committed"


class DeadLettering(Middleware):
    """The dead-letter decisions' home in the default stack (it owns no task options)."""
