"""Logging for the worker and the CLI: readable by default, JSON for log pipelines.

Everything goes through the standard :mod:`logging` module; ktasks only
installs one handler on the root logger (:func:`configure_logging`), so an
application's own handlers and loggers keep working.

Every line about a task carries its name, id, topic, partition and offset as
``extra`` fields (see :func:`task_extra`): the text format appends
``[topic/partition@offset]``, the JSON format emits them as keys. Lines that a
task's own code logs while it runs get the same fields, through
:func:`task_context` and the handler's :class:`TaskFieldsFilter`.

``--log-format json`` writes one JSON object per line::

    {"ts": "2026-11-29T10:00:00.123Z", "level": "INFO", "logger": "ktasks.worker.child",
     "process": "child-0", "pid": 4242, "message": "task billing.charge[ab12] succeeded in 0.012s (attempt 0): None",
     "task_name": "billing.charge", "task_id": "ab12", "topic": "billing.tasks", "partition": 3,
     "offset": 1041}

Other ``extra`` fields given to a log call are emitted as keys too; an
exception adds ``exc`` (the formatted traceback).
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__ = ["configure_logging", "log_line", "task_extra", "task_context", "bind_task", "TASK_FIELDS", "TextFormatter", "JsonFormatter",
           "TaskFieldsFilter", "RepeatFilter", "REPEAT_WINDOW_S"]

TASK_FIELDS = ("task_name", "task_id", "topic", "partition", "offset")

#: The task running in this process (a worker child), for lines its own code logs.
_current_task: contextvars.ContextVar[Mapping[str, Any] | None] = contextvars.ContextVar(
    "ktasks_current_task", default=None)

# Attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "procname", "taskName"}


def task_extra(task_name: str, task_id: str, topic: str | None, partition: int | None,
               offset: int | None) -> dict[str, Any]:
    """``extra=`` for a log call about one task."""
    return {"task_name": task_name, "task_id": task_id, "topic": topic, "partition": partition,
            "offset": offset}


def bind_task(extra: Mapping[str, Any] | None) -> None:
    """Make ``extra`` (from :func:`task_extra`) the running task of this thread; ``None`` when it ends.

    The worker child calls this around each task, so lines the task's own code
    logs carry its fields.
    """
    _current_task.set(extra)


@contextlib.contextmanager
def task_context(extra: Mapping[str, Any]) -> Iterator[None]:
    """While the block runs, log lines of this thread that name no task get ``extra``'s task fields."""
    token = _current_task.set(extra)
    try:
        yield
    finally:
        _current_task.reset(token)


def log_line(log: logging.Logger, level: int, msg: str, *args: Any, extra: Mapping[str, Any] | None = None) -> None:
    """``log.log(level, msg, *args, extra=extra)`` for the per-task lines of a worker child.

    The same record, but the caller is read from the calling frame instead of
    by :meth:`logging.Logger.findCaller`, whose walk up the stack was a tenth
    of a line's cost (two lines per task at ``--loglevel INFO``).
    """
    if not log.isEnabledFor(level):
        return
    frame = sys._getframe(1)
    code = frame.f_code
    log.handle(log.makeRecord(log.name, level, code.co_filename, frame.f_lineno, msg, args, None,
                              code.co_name, extra))


class TaskFieldsFilter(logging.Filter):
    """Adds the running task's fields (from :func:`task_context`) to records that have none."""

    def filter(self, record: logging.LogRecord) -> bool:
        current = _current_task.get()
        if current is not None and getattr(record, "task_id", None) is None:
            for name, value in current.items():
                setattr(record, name, value)
        return True


#: kafka-python says the same thing again and again while a broker is away ("Marking the
#: coordinator dead", "Connection failed", thousands of times): one line per this many seconds.
REPEAT_WINDOW_S = 30.0


#: Numbers, hex addresses and quoted or bracketed values in a line kafka-python formatted itself.
_VARYING = re.compile(r"0x[0-9a-fA-F]+|\d+(?:\.\d+)?|<[^<>]*>|'[^']*'")


def _template(record: logging.LogRecord) -> str:
    """The kind of line ``record`` is: its format string, or, for a line formatted before the
    call (no arguments), its text with the varying parts blanked out.

    kafka-python formats some warnings itself (the selector's "Task <... at 0x7f..> ran for
    0.186s (>0.100s threshold)", dozens a minute on a busy host): every one would otherwise
    be a new kind and pass.
    """
    msg = str(record.msg)
    return msg if record.args else _VARYING.sub("#", msg)


class RepeatFilter(logging.Filter):
    """Lets one line of a kind through per ``window_s``, then the next one with a count of those held back.

    Applies to loggers under ``prefixes`` (kafka-python's by default); a
    line's kind is its logger, level and message template (the format string
    before its arguments; for a line formatted before the call, its text with
    numbers, addresses and quoted values blanked). The line after a window carries
    ``repeats_suppressed``: the text format appends ``(N similar lines
    suppressed)``, the JSON format emits it as a key.
    """

    def __init__(self, prefixes: tuple[str, ...] = ("kafka",), window_s: float = REPEAT_WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.prefixes = prefixes
        self.window_s = window_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, int, str], list[float]] = {}  # kind -> [window end, suppressed]
        self._applies: dict[str, bool] = {}                         # logger name -> under a prefix

    def filter(self, record: logging.LogRecord) -> bool:
        name = record.name
        applies = self._applies.get(name)
        if applies is None:
            applies = self._applies[name] = any(name == p or name.startswith(p + ".") for p in self.prefixes)
        if not applies:
            return True
        kind = (name, record.levelno, _template(record))
        now = self._clock()
        with self._lock:
            state = self._seen.get(kind)
            if state is not None and now < state[0]:
                state[1] += 1
                return False
            if len(self._seen) > 1000:  # message templates are few; never let this grow without end
                self._seen = {k: v for k, v in self._seen.items() if v[0] > now}
            self._seen[kind] = [now + self.window_s, 0]
        if state is not None and state[1]:
            record.repeats_suppressed = int(state[1])
        return True


class TextFormatter(logging.Formatter):
    """``time LEVEL [process:pid] logger: message [topic/partition@offset]``."""

    def __init__(self, process_name: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s [%(procname)s] %(name)s: %(message)s")
        self.process_name = process_name
        self._second = -1
        self._stamp = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        # The date and time to the second, formatted once per second (strftime was a
        # tenth of a line's cost); the same text as logging.Formatter's default.
        if datefmt is not None:
            return super().formatTime(record, datefmt)
        second = int(record.created)
        if second != self._second:
            self._stamp = time.strftime(self.default_time_format, self.converter(record.created))
            self._second = second
        return f"{self._stamp},{int(record.msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        record.procname = f"{self.process_name}:{record.process or os.getpid()}"
        line = super().format(record)
        repeats = getattr(record, "repeats_suppressed", None)
        if repeats:
            line += f" ({repeats} similar lines suppressed)"
        fields = record.__dict__
        if fields.get("task_id") is not None:
            line += f" [{fields.get('topic')}/{fields.get('partition')}@{fields.get('offset')}]"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, process, message, task fields, other extras."""

    def __init__(self, process_name: str) -> None:
        super().__init__()
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "process": self.process_name,
            "pid": os.getpid(), "message": record.getMessage(),
        }
        for name in TASK_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                out[name] = value
        for name, value in vars(record).items():
            if name not in _STANDARD_ATTRS and name not in out and not name.startswith("_"):
                out[name] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text", process_name: str = "main") -> None:
    """Configure the root logger for a ktasks process (idempotent): one stderr handler, text or JSON."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if fmt == "json" else TextFormatter(process_name))
    handler.addFilter(TaskFieldsFilter())
    handler.addFilter(RepeatFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ktasks", False):
            root.removeHandler(h)
    handler._ktasks = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO about every connection; keep it to warnings.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
