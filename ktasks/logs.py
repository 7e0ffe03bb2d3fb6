"""Logging for the worker and the CLI: readable by default, JSON for log pipelines.

Every line about a task carries its name, id, partition and offset, as
``extra`` fields: the text format shows them, the JSON format emits them as
keys.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

__all__ = ["configure_logging", "task_extra", "TASK_FIELDS"]

TASK_FIELDS = ("task_name", "task_id", "topic", "partition", "offset")


def task_extra(task_name: str, task_id: str, topic: str | None, partition: int | None,
               offset: int | None) -> dict[str, Any]:
    """``extra=`` for a log call about one task."""
    return {"task_name": task_name, "task_id": task_id, "topic": topic, "partition": partition,
            "offset": offset}


class TextFormatter(logging.Formatter):
    def __init__(self, process_name: str) -> None:
        super().__init__("%(asctime)s %(levelname)-7s [%(procname)s] %(name)s: %(message)s")
        self.process_name = process_name

    def format(self, record: logging.LogRecord) -> str:
        record.procname = f"{self.process_name}:{os.getpid()}"
        line = super().format(record)
        if getattr(record, "task_id", None) is not None:
            line += " [{}/{}@{}]".format(*(getattr(record, n, None) for n in ("topic", "partition", "offset")))
        return line


class JsonFormatter(logging.Formatter):
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
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def configure_logging(level: str = "INFO", fmt: str = "text", process_name: str = "main") -> None:
    """Configure the root logger for a ktasks process (idempotent)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(process_name) if fmt == "json" else TextFormatter(process_name))
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_ktasks", False):
            root.removeHandler(h)
    handler._ktasks = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    # kafka-python is chatty at INFO about every connection; keep it to warnings.
    logging.getLogger("kafka").setLevel(max(logging.WARNING, root.level))
