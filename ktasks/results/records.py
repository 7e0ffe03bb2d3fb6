"""Result records: what a finished task publishes, and where.

A result record is a msgpack map (the task message's codec, so a result may
hold the same types as an argument)::

    {"v": 1, "id": str, "task": str, "ok": bool, "value": any,
     "exc": [type, message, traceback] | None, "reason": str | None,
     "at": float, "exp": float}

It goes to two topics: the sender's reply partition of ``<app>.replies`` (the
partition number travels in the task's ``meta["reply"]``), read by the
sending process only, and ``<app>.results`` (compacted, keyed and partitioned
by task id), read by a lookup from anywhere (:mod:`.lookup`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError, ResultExpired, TaskFailed, exception_name
from ..kafka import murmur2
from ..message import pack, unpack

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["ResultRecord", "replies_topic", "results_topic", "chords_topic", "partition_for", "failure_of",
           "result_topic_specs"]

RECORD_VERSION = 1

#: ``meta`` keys the results middleware and the canvas put on a task message.
META_REPLY = "reply"        # int: the sender's partition of <app>.replies
META_STORE = "store"        # True: publish this task's result whatever its store_result option says
META_CHAIN = "chain"        # list of signatures still to run after this one (see .canvas)
META_FINAL = "final"        # the id a chain's failure is reported under (its last step's id)
META_CHORD = "chord"        # [chord id, member index]

#: The exception type name a result gives for each reason a task is dead-lettered without the child's report.
DEAD_LETTER_TYPES = {
    "expired": "ktasks.errors.TaskExpired", "poison": "ktasks.errors.PoisonMessage",
    "rejected": "ktasks.errors.Rejected", "time-limit": "ktasks.errors.TimeLimitExceeded",
    "worker-lost": "ktasks.errors.WorkerLost",
}


def replies_topic(app: App) -> str:
    return f"{app.name}.replies"


def results_topic(app: App) -> str:
    return f"{app.name}.results"


def chords_topic(app: App) -> str:
    return f"{app.name}.chords"


def partition_for(key: str, partitions: int) -> int:
    """The partition of ``key`` among ``partitions``: Kafka's default partitioner (murmur2), so any client agrees."""
    return (murmur2(key.encode()) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True)
class ResultRecord:
    """One task's outcome as stored in Kafka."""

    id: str
    task: str
    ok: bool
    value: Any = None
    exc: tuple[str, str, str] | None = None
    reason: str | None = None
    at: float = 0.0
    exp: float = 0.0

    def encode(self) -> bytes:
        body = {"v": RECORD_VERSION, "id": self.id, "task": self.task, "ok": self.ok, "value": self.value,
                "exc": list(self.exc) if self.exc else None, "reason": self.reason, "at": self.at,
                "exp": self.exp}
        try:
            return pack(body)
        except (TypeError, ValueError, OverflowError) as exc:
            # The task succeeded but its value cannot travel: say so to whoever waits, rather than nothing.
            logger.error("task %s[%s]: its return value cannot be encoded with msgpack (%s): storing a "
                         "failure instead", self.task, self.id, exc)
            return ResultRecord(self.id, self.task, False, None,
                                ("ktasks.errors.EncodeError", f"return value cannot be encoded: {exc}", ""),
                                "unencodable-result", self.at, self.exp).encode()

    @classmethod
    def decode(cls, data: bytes | None) -> ResultRecord:
        if data is None:
            raise DecodeError("result record has no value")
        try:
            body = unpack(data)
        except Exception as exc:
            raise DecodeError(f"result record is not msgpack: {type(exc).__name__}: {exc}") from exc
        if not isinstance(body, dict) or body.get("v") != RECORD_VERSION:
            raise DecodeError("not a ktasks result record (version 1)")
        for name, kind in (("id", str), ("task", str), ("ok", bool), ("at", (int, float)), ("exp", (int, float))):
            if not isinstance(body.get(name), kind):
                raise DecodeError(f"result record field {name!r} is missing or has the wrong type")
        failure = body.get("exc")
        if failure is not None and (not isinstance(failure, list) or len(failure) != 3 or
                                    not all(isinstance(x, str) for x in failure)):
            raise DecodeError("result record field 'exc' must be [type, message, traceback]")
        triple = (failure[0], failure[1], failure[2]) if failure else None
        return cls(body["id"], body["task"], body["ok"], body.get("value"), triple,
                   body.get("reason"), float(body["at"]), float(body["exp"]))

    @property
    def expired(self) -> bool:
        return time.time() > self.exp

    def outcome(self) -> Any:
        """The value; raises :class:`TaskFailed` for a failure, :class:`ResultExpired` past its expiry."""
        if self.expired:
            raise ResultExpired(f"the result of task {self.task}[{self.id}] expired at "
                                f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(self.exp))} "
                                "(result_expires_s): it is gone")
        if self.ok:
            return self.value
        exc_type, message, tb = self.exc or ("ktasks.errors.TaskError", "failed", "")
        raise TaskFailed(self.task, self.id, exc_type, message, tb, self.reason)


def success_of(app: App, task_id: str, task: str, value: Any) -> ResultRecord:
    now = time.time()
    return ResultRecord(task_id, task, True, value, None, None, now, now + app.settings.result_expires_s)


def failure_of(app: App, task_id: str, task: str, exc_type: str, message: str, tb: str = "",
               reason: str | None = None) -> ResultRecord:
    now = time.time()
    return ResultRecord(task_id, task, False, None, (exc_type, message, tb), reason, now,
                        now + app.settings.result_expires_s)


def exc_triple(exc: BaseException) -> tuple[str, str, str]:
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return exception_name(exc), str(exc), tb


def reader_config(app: App, client_id: str, reset: str) -> dict[str, Any]:
    """kafka-python settings of a consumer that assigns itself partitions (no group, no commits)."""
    from ..kafka import client_config

    settings = app.settings
    return client_config(settings, "consumer", dict(
        client_id=client_id, group_id=None, enable_auto_commit=False, auto_offset_reset=reset,
        # A transactional worker's results count only once its transaction commits.
        isolation_level="read_committed",
        allow_auto_create_topics=False, bootstrap_timeout_ms=settings.send_timeout_ms), user_wins=False)


def result_topic_specs(app: App) -> dict[str, tuple[int, dict[str, str]]]:
    """``{topic: (partitions, configs)}`` of ``<app>.replies`` and ``<app>.results`` (retention: ``result_expires_s``)."""
    retention = str(app.settings.result_expires_s * 1000)
    return {replies_topic(app): (app.settings.reply_partitions, {"retention.ms": retention}),
            results_topic(app): (app.settings.results_partitions,
                                 {"cleanup.policy": "compact,delete", "retention.ms": retention})}


def ensure_result_topics(app: App) -> None:
    """Create ``<app>.replies`` and ``<app>.results`` if missing."""
    if not app.settings.auto_create_topics:
        return
    wanted = result_topic_specs(app)
    todo = [t for t in wanted if t not in app._ensured]
    for topic in todo:
        partitions, configs = wanted[topic]
        app.topics.ensure([topic], partitions=partitions, configs=configs)
        app._ensured.add(topic)
