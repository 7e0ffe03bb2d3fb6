"""Periodic task entries: ``app.add_periodic_task(name, schedule, task, ...)`` and their slots.

A schedule is a number of seconds (slots at whole multiples of it since the
epoch, so every process computes the same slots) or a cron string read by
`cronsim <https://pypi.org/project/cronsim/>`_ in the entry's time zone.
"""

from __future__ import annotations

import datetime as _dt
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ..errors import ConfigurationError

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["PeriodicEntry", "add_periodic_task", "slot_task_id"]

#: Longest walk through cron slots when catching up (a schedule every second, missed for a day).
_MAX_CRON_STEPS = 100_000


@dataclass(frozen=True)
class PeriodicEntry:
    """One periodic task: what to enqueue, and when."""

    name: str
    schedule: float | str
    task: str
    args: tuple[Any, ...] = ()
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    catch_up: bool = False
    tz: str = "UTC"
    topic: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.schedule, str):
            self._cron(0.0)       # a bad expression fails here, at declaration

    def describe(self) -> str:
        if isinstance(self.schedule, str):
            return f"cron {self.schedule!r} {self.tz}"
        return f"every {self.schedule:g} s"

    def _cron(self, after: float) -> Any:
        from cronsim import CronSim, CronSimError

        try:
            return CronSim(str(self.schedule), _dt.datetime.fromtimestamp(after, ZoneInfo(self.tz)))
        except CronSimError as exc:
            raise ConfigurationError(f"periodic task {self.name!r}: bad cron expression "
                                     f"{self.schedule!r}: {exc}") from exc

    def next_after(self, t: float) -> float:
        """The first slot strictly after ``t`` (epoch seconds)."""
        if isinstance(self.schedule, str):
            return float(next(self._cron(t)).timestamp())
        every = float(self.schedule)
        return (math.floor(t / every) + 1) * every

    def latest_at_or_before(self, t: float, since: float) -> float | None:
        """The last slot in ``(since, t]``, or ``None`` if there is none."""
        if isinstance(self.schedule, str):
            found, it = None, self._cron(since)
            for _ in range(_MAX_CRON_STEPS):
                slot = float(next(it).timestamp())
                if slot > t:
                    break
                found = slot
            return found
        every = float(self.schedule)
        slot = math.floor(t / every) * every
        return slot if slot > since else None


def slot_task_id(name: str, slot: float) -> str:
    """The task id of an entry's fire at ``slot``: the same for any owner, so the ledger also dedupes it."""
    return f"beat-{name}-{int(round(slot * 1000))}"


def add_periodic_task(app: App, name: str, schedule: float | str, task: Any, *, args: Sequence[Any] = (),
                      kwargs: Mapping[str, Any] | None = None, catch_up: bool = False, tz: str = "UTC",
                      topic: str | None = None) -> PeriodicEntry:
    """Declare a periodic entry on ``app`` (see ``App.add_periodic_task``)."""
    if not isinstance(name, str) or not name or name.startswith("\x00"):
        raise ConfigurationError(f"periodic task name must be a non-empty str, got {name!r}")
    if isinstance(schedule, bool) or not isinstance(schedule, (int, float, str)):
        raise ConfigurationError(f"periodic task {name!r}: schedule must be seconds or a cron string, "
                                 f"got {schedule!r}")
    if isinstance(schedule, (int, float)) and not schedule > 0:
        raise ConfigurationError(f"periodic task {name!r}: schedule must be more than 0 seconds")
    try:
        ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigurationError(f"periodic task {name!r}: unknown time zone {tz!r}") from exc
    task_name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(task_name, str):
        raise ConfigurationError(f"periodic task {name!r}: task must be a task or a task name, got {task!r}")
    if not isinstance(args, (list, tuple)):
        raise ConfigurationError(f"periodic task {name!r}: args must be a list or tuple")
    entry = PeriodicEntry(name, schedule if isinstance(schedule, str) else float(schedule), task_name,
                          tuple(args), dict(kwargs or {}), bool(catch_up), tz, topic)
    if name in app.periodic_tasks:
        logger.warning("periodic task %s declared twice; the later declaration wins", name)
    app.periodic_tasks[name] = entry
    return entry
