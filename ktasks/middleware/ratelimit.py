"""Per-task rate limits: ``@app.task(rate_limit="100/s")`` (also ``/m``, ``/h``), per worker process.

Built only from the intake hook: a record over its task's rate is deferred
(:class:`~ktasks.middleware.Defer`) to the time its turn comes, as Celery's
``rate_limit`` does it, per worker process (two workers each run the task
at the full rate). Each record is given a slot, one every ``1/rate`` seconds,
and keeps it (by its task id) when it is offered again, so records run in the
order they were taken. A deferred record never holds up the other tasks of
its partition, only the records with the same key behind it: the worker
keeps short deferrals in memory and moves long ones to the delay tiers.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigurationError
from .base import Defer, Intake, Middleware

if TYPE_CHECKING:
    from ..task import Task

logger = logging.getLogger(__name__)

__all__ = ["RateLimit", "parse_rate"]

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}

#: A slot not claimed this long after its time is forgotten (its record went to another worker).
STALE_S = 600.0


def parse_rate(value: Any, where: str = "rate_limit") -> float | None:
    """Tasks a second that ``value`` allows: ``"100/s"``, ``"10/m"``, ``"5/h"``, or a number (a second).

    ``None`` is no limit; anything else raises :class:`~ktasks.errors.ConfigurationError`.
    """
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        count, unit = float(value), "s"
    elif isinstance(value, str):
        text, _, unit = value.strip().partition("/")
        unit = unit.strip() or "s"
        try:
            count = float(text)
        except ValueError:
            count = -1.0
    else:
        count, unit = -1.0, "s"
    if count <= 0 or unit not in _UNITS:
        raise ConfigurationError(f"{where}={value!r}: give a positive number of tasks per second, minute or "
                                 "hour, like '100/s', '10/m' or '5/h'")
    return count / _UNITS[unit]


class _Slots:
    """One task's schedule: the next free slot, and the slots given to records still deferred."""

    def __init__(self, per_s: float) -> None:
        self.interval_s = 1.0 / per_s
        self.next_free = 0.0
        self.given: dict[str, float] = {}      # task id -> its slot
        self._next_prune = 0.0

    def slot(self, task_id: str, now: float) -> float:
        """When the record ``task_id`` may start (``<= now``: at once; it is then taken off the books)."""
        given = self.given.get(task_id)
        if given is not None:
            if given <= now:
                del self.given[task_id]
            return given
        slot = max(now, self.next_free)
        self.next_free = slot + self.interval_s
        if slot > now:
            self.given[task_id] = slot
            self._prune(now)
        return slot

    def _prune(self, now: float) -> None:
        if now < self._next_prune:
            return
        self._next_prune = now + STALE_S
        for task_id in [t for t, s in self.given.items() if s < now - STALE_S]:
            del self.given[task_id]


class RateLimit(Middleware):
    """Owns ``rate_limit``; decides, at intake, when each record of a limited task may start."""

    task_options: ClassVar[Mapping[str, Any]] = {"rate_limit": None}

    def __init__(self) -> None:
        self._slots: dict[str, _Slots] = {}

    def check_task_options(self, task_name: str, options: Mapping[str, Any]) -> None:
        parse_rate(options.get("rate_limit"), where=f"task {task_name!r}: rate_limit")

    def decides_for(self, task: Task[..., Any]) -> bool:
        return task.option("rate_limit") is not None

    def intake(self, record: Intake) -> Defer | None:
        slots = self._slots.get(record.task.name)
        if slots is None:
            per_s = parse_rate(record.task.option("rate_limit"))
            assert per_s is not None
            slots = self._slots[record.task.name] = _Slots(per_s)
        now = time.time()
        start = slots.slot(record.message.id, now)
        if start <= now:
            return None
        return Defer(start, reason=f"rate_limit {record.task.option('rate_limit')}")
