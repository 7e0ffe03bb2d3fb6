"""Celery's option names: one table for task options (``@app.task(...)``) and call options (``apply_async``).

Where Celery and ktasks mean the same thing, Celery's name is accepted and
translated to ktasks' (which carries its unit: ``time_limit`` becomes
``time_limit_s``), so code moves over unchanged. Where Kafka cannot honour an
option, it is refused with :class:`~ktasks.errors.UnsupportedOption`, whose
message says why and what ktasks does instead: silently ignoring
``priority=9`` would be worse than failing. docs/celery.md shows the same
table side by side.
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Collection, Mapping
from typing import Any

from .errors import ConfigurationError, UnsupportedOption

__all__ = ["ALIASES", "UNSUPPORTED", "translate", "absolute_time"]

#: Celery's name -> ktasks' name, for task and call options alike (all durations in seconds).
ALIASES: Mapping[str, str] = {
    "retry_backoff": "retry_backoff_s",
    "retry_backoff_max": "retry_backoff_max_s",
    "soft_time_limit": "soft_time_limit_s",
    "time_limit": "time_limit_s",
    "autoretry_for": "retry_for",
    "queue": "topic",
    "countdown": "countdown_s",
}

#: Celery options Kafka cannot honour -> why, and what ktasks does instead.
UNSUPPORTED: Mapping[str, str] = {
    "priority": "a Kafka partition is read strictly in order, so there are no message priorities. "
                "Send urgent tasks to their own topic (topic= or queue=) and give it its own workers "
                "(ktasks worker -Q that.topic)",
    "acks_late": "ktasks has no acknowledgement mode to choose: a record's offset is committed only after "
                 "its task finished (always 'late'), and the ledger keeps a redelivered task from running "
                 "twice. Remove the option",
    "reject_on_worker_lost": "a task whose child process dies fails with WorkerLost and goes through its "
                             "retries, then the dead-letter topic; there is nothing to requeue by hand",
    "exchange": "there are no AMQP exchanges: name the topic (topic= or queue=); key= picks the partition",
    "routing_key": "there are no AMQP routing keys: name the topic (topic= or queue=); key= picks the "
                   "partition and keeps tasks with the same key in order",
    "serializer": "messages are always msgpack (data only, never pickle); see docs/concepts.md for the "
                  "types arguments may have",
}


def _ignore_result(value: Any, where: str) -> None:
    if value is not True:
        raise UnsupportedOption(f"{where}: ignore_result={value!r}: ktasks keeps no results for callers; a "
                                "return value is recorded only in the worker host's ledger. "
                                "ignore_result=True (the same as leaving it out) is accepted")


#: Options accepted because they ask for what ktasks already does; checked, then dropped.
_NO_OPS = {"ignore_result": _ignore_result}


def translate(options: Mapping[str, Any], *, where: str, known: Collection[str]) -> dict[str, Any]:
    """Options with Celery's names replaced by ktasks'; refuses what cannot be honoured and what is unknown.

    ``where`` names the task (or call) in error messages; ``known`` is the set
    of ktasks names valid in this place.
    """
    out: dict[str, Any] = {}
    for name, value in options.items():
        if name in UNSUPPORTED:
            raise UnsupportedOption(f"{where}: option {name!r} is not supported: {UNSUPPORTED[name]}")
        if name in _NO_OPS:
            _NO_OPS[name](value, where)
            continue
        canonical = ALIASES.get(name, name)
        if canonical not in known:
            raise ConfigurationError(f"{where}: unknown option {name!r} (known: {', '.join(sorted(known))}; "
                                     "see docs/celery.md for Celery's names)")
        if canonical in out or (canonical != name and canonical in options):
            raise ConfigurationError(f"{where}: give {canonical!r} or {name!r}, not both")
        out[canonical] = value
    return out


def absolute_time(value: Any, what: str, now: float | None = None) -> float:
    """``eta``/``expires`` as epoch seconds: an aware datetime, or seconds from now (``expires`` only).

    A naive datetime is refused: which time zone it meant cannot be known.
    """
    if isinstance(value, _dt.datetime):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ConfigurationError(f"{what}={value!r} is a naive datetime; give a timezone-aware one, "
                                     "e.g. datetime.now(timezone.utc) + timedelta(minutes=5)")
        return value.timestamp()
    if what == "expires" and isinstance(value, (int, float)) and not isinstance(value, bool):
        return (time.time() if now is None else now) + float(value)
    if what == "expires" and isinstance(value, _dt.timedelta):
        return (time.time() if now is None else now) + value.total_seconds()
    kinds = "a timezone-aware datetime, a timedelta or seconds from now" if what == "expires" \
        else "a timezone-aware datetime"
    raise ConfigurationError(f"{what} must be {kinds}, got {type(value).__name__} {value!r}")
