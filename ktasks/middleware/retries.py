"""Retries and backoff: whether a failed attempt runs again, when, and otherwise why it is dead-lettered.

The one place that decides. A task that raised in the child, a child killed
past its hard time limit and a child that died under a task (decided in the
worker parent) and eager mode all ask :func:`decide`; the task's options
(``max_retries``, ``retry_for``, ``retry_backoff_s``, ``retry_backoff_max_s``,
``retry_jitter``) and the app's settings are the policy, read through
:class:`~ktasks.task.Task`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import Retry
from .base import Middleware

if TYPE_CHECKING:
    from ..task import Task

logger = logging.getLogger(__name__)

__all__ = ["Retries", "RetryDecision", "decide", "cause_of"]


@dataclass(frozen=True)
class RetryDecision:
    """What becomes of a failed attempt: ``retry`` after ``delay_s``, or the dead letter's ``reason``."""

    retry: bool
    delay_s: float = 0.0
    reason: str | None = None


def cause_of(error: BaseException) -> BaseException:
    """The exception a failure is reported as: ``ctx.retry(exc=...)``'s, else the error itself."""
    return error.exc if isinstance(error, Retry) and error.exc is not None else error


def decide(task: Task[..., Any], error: BaseException, attempt: int, *, reason: str | None = None
           ) -> RetryDecision:
    """Whether attempt ``attempt`` (0-based) of ``task``, which failed with ``error``, runs again.

    ``reason`` is the dead letter's reason when no retry is left, for failures the
    worker parent saw (``time-limit``, ``worker-lost``); otherwise the task says
    (``retries-exhausted`` or ``not-retriable``).
    """
    if task.should_retry(error, attempt):
        return RetryDecision(True, task.retry_delay_s(error, attempt))
    return RetryDecision(False, reason=reason or task.dead_letter_reason(error))


class Retries(Middleware):
    """Owns the retry options; the decision itself is :func:`decide`."""

    task_options: ClassVar[Mapping[str, Any]] = {
        "max_retries": None, "retry_for": (Exception,), "retry_backoff_s": None, "retry_backoff_max_s": None,
        "retry_jitter": None,
    }
