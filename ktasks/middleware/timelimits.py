"""Time limits: the soft one raised inside the task (in the child), the hard one enforced by the parent.

``soft_time_limit_s`` arms a timer in the child that raises
:class:`~ktasks.errors.SoftTimeLimitExceeded` in the task; ``time_limit_s`` is
watched by the worker parent, which kills the child when the running task
passes it (:func:`overdue`), and the attempt fails with
:class:`~ktasks.errors.TimeLimitExceeded` (then :mod:`.retries` decides).
"""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import SoftTimeLimitExceeded, TimeLimitExceeded
from .base import Middleware

if TYPE_CHECKING:
    from ..task import Task

logger = logging.getLogger(__name__)

__all__ = ["TimeLimits", "soft_limit_s", "soft_limit", "overdue", "exceeded", "on_soft_limit"]

#: The dead letter's reason when the last attempt was killed past its hard time limit.
REASON = "time-limit"


def soft_limit_s(task: Task[..., Any]) -> float | None:
    """The soft limit the child arms for ``task`` (sent with each job, see :mod:`ktasks.worker.protocol`)."""
    return task.options.soft_time_limit_s


def on_soft_limit(signum: int, frame: Any) -> None:
    """The child's SIGALRM handler: the soft limit is reached inside the task."""
    raise SoftTimeLimitExceeded("soft time limit exceeded")


@contextmanager
def soft_limit(seconds: float | None) -> Iterator[None]:
    """Arm the soft limit around a task call; the timer is off again before anything is recorded."""
    if not seconds:
        yield
        return
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)


def overdue(task: Task[..., Any] | None, running_for_s: float) -> float | None:
    """The hard limit ``task`` ran past after ``running_for_s`` seconds, or None if it has not."""
    limit = task.options.time_limit_s if task is not None else None
    return limit if limit and running_for_s > limit else None


def exceeded(task: Task[..., Any]) -> TimeLimitExceeded:
    """The failure of an attempt whose child was killed for its hard limit."""
    return TimeLimitExceeded(f"ran past time_limit_s={task.options.time_limit_s}")


class TimeLimits(Middleware):
    """Owns ``soft_time_limit_s`` and ``time_limit_s``."""

    task_options: ClassVar[Mapping[str, Any]] = {"soft_time_limit_s": None, "time_limit_s": None}
