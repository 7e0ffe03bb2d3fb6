"""The dead-letter record format: building a dead letter's record and reading one back.

The header names are in :mod:`ktasks.headers` (with what each copy of a
record does with them); this module writes and parses their values. No Kafka
client here: :mod:`.publishing` sends what :func:`dead_letter_record` builds,
and :mod:`.admin` reads records back as :class:`StoredDeadLetter`.

A dead letter keeps the original value, key and headers byte for byte (minus
the headers an earlier dead-lettering left) and adds these. Where Spring Kafka
has a header for it, the header has Spring's name and encoding, so tools built
for Spring's ``DeadLetterPublishingRecoverer`` read ktasks' dead letters too:

===================================  ==============================================
header                               value
===================================  ==============================================
``kafka_dlt-original-topic``         topic the record was consumed from (UTF-8)
``kafka_dlt-original-partition``     its partition (4-byte big-endian int)
``kafka_dlt-original-offset``        its offset (8-byte big-endian long)
``kafka_dlt-original-timestamp``     its timestamp in ms (8-byte big-endian long)
``kafka_dlt-original-timestamp-type`` ``CreateTime`` or ``LogAppendTime``, when known
``kafka_dlt-original-consumer-group`` consumer group of the worker (UTF-8)
``kafka_dlt-exception-fqcn``         exception class, ``module.QualName`` (UTF-8)
``kafka_dlt-exception-message``      ``str(exception)`` (UTF-8)
``kafka_dlt-exception-stacktrace``   the formatted traceback (UTF-8)
``ktasks-dlt-reason``                one of :data:`REASONS`
``ktasks-dlt-attempts``              attempts made (decimal text)
``ktasks-dlt-host``                  host name of the worker
``ktasks-dlt-time``                  when it was dead-lettered, ISO 8601 UTC
``ktasks-origin-topic``              the task topic a replay goes back to
===================================  ==============================================
"""

from __future__ import annotations

import datetime as _dt
import socket
import struct
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

from ..errors import DecodeError, exception_name, normalize_exception_name
from ..headers import (
    H_ATTEMPTS,
    H_EXC_FQCN,
    H_EXC_MESSAGE,
    H_EXC_STACKTRACE,
    H_HOST,
    H_ORIGIN_TOPIC,
    H_ORIGINAL_GROUP,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TIMESTAMP,
    H_ORIGINAL_TIMESTAMP_TYPE,
    H_ORIGINAL_TOPIC,
    H_REASON,
    H_TIME,
    H_VALUE_DROPPED,
    strip_dead_letter_headers,
)
from ..message import HEADER_ID, HEADER_TASK, Message, decode, header

__all__ = [
    "REASONS", "MAX_EXC_MESSAGE_BYTES", "MAX_STACKTRACE_BYTES", "DeadLetter", "StoredDeadLetter",
    "exception_info", "dead_letter_record", "without_value", "int_header",
]

#: Why a record was dead-lettered; the value of ``ktasks-dlt-reason``. See docs/dead-letters.md.
REASONS = (
    "failed",             # raised an exception outside the task's retry_for
    "retries-exhausted",  # still failing after max_retries retries
    "not-retriable",      # the exception was marked not retriable (or retry was not allowed)
    "poison",             # started max_starts times without ever finishing (crashed the worker)
    "undecodable",        # value is not a ktasks envelope: garbage, unknown version, missing fields
    "unregistered",       # the task name is not registered with the worker's app
    "commit-failed",      # finished, but its offset could not be committed before the deadline
    "worker-lost",        # the child running it died (signal, os._exit, OOM kill)
    "rejected",           # a middleware's intake hook refused it (ktasks.Reject), or the hook raised
    "time-limit",         # ran past its hard time limit and was killed
    "expired",            # reached a worker after its expires time; not run
    "too-large",          # its retry (or delay) copy was too large for the broker, even without error headers
)

#: Longest exception message and stack trace kept in the headers, in bytes (UTF-8).
MAX_EXC_MESSAGE_BYTES = 8 * 1024
MAX_STACKTRACE_BYTES = 64 * 1024
#: Room left for the record's framing when fitting a dead letter under the size limit.
_RECORD_OVERHEAD = 1024

_TIMESTAMP_TYPES = {0: "CreateTime", 1: "LogAppendTime"}


@dataclass
class DeadLetter:
    """A record the worker gives up on, with why; what the worker hands to :func:`publish`.

    ``value``, ``key`` and ``headers`` are the original record's and are kept
    unchanged. ``topic``/``partition``/``offset``/``timestamp_ms`` say where it
    was consumed; ``origin_topic`` is the task topic a replay goes back to (for
    a record that failed on a retry topic, the task topic it belongs to: the
    worker reads it from the record's ``ktasks-origin-topic``, trusted there).
    """

    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]
    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    origin_topic: str
    reason: str
    exc_type: str | None = None
    exc_message: str | None = None
    stacktrace: str | None = None
    attempts: int = 0
    group: str = ""
    host: str = field(default_factory=socket.gethostname)
    #: kafka-python's ``ConsumerRecord.timestamp_type`` (0 CreateTime, 1 LogAppendTime), if known.
    timestamp_type: int | None = None
    #: Set when the value was left out because the record was too large: why (``H_VALUE_DROPPED``).
    value_dropped: str | None = None

    def __post_init__(self) -> None:
        if self.reason not in REASONS:
            raise ValueError(f"dead-letter reason {self.reason!r} is not one of {REASONS}")
        self.headers = list(self.headers or [])

    @classmethod
    def from_record(cls, record: Any, reason: str, *, origin_topic: str | None = None,
                    exc: BaseException | None = None, exc_type: str | None = None,
                    exc_message: str | None = None, stacktrace: str | None = None,
                    attempts: int = 0, group: str = "") -> DeadLetter:
        """Build from a kafka-python ``ConsumerRecord``.

        Give the exception itself as ``exc`` (its class, message and traceback
        are taken from it), or its parts as strings when it was raised in
        another process. ``origin_topic`` defaults to the record's topic.
        """
        if exc is not None:
            e_type, e_msg, e_tb = exception_info(exc)
            exc_type = exc_type or e_type
            exc_message = exc_message if exc_message is not None else e_msg
            stacktrace = stacktrace or e_tb
        return cls(
            value=record.value, key=record.key, headers=list(record.headers or []),
            topic=record.topic, partition=record.partition, offset=record.offset,
            timestamp_ms=record.timestamp, origin_topic=origin_topic or record.topic, reason=reason,
            exc_type=exc_type, exc_message=exc_message, stacktrace=stacktrace, attempts=attempts,
            group=group, timestamp_type=getattr(record, "timestamp_type", None),
        )

    @property
    def effective_origin_topic(self) -> str:
        """The task topic to replay to: ``origin_topic``.

        Never the record's own ``ktasks-origin-topic`` header: whoever builds
        the dead letter decides whether that header is to be trusted (the
        worker trusts it on retry topics only, see :mod:`ktasks.headers`), so
        a header a producer put on a task topic cannot route dead letters.
        """
        return self.origin_topic


def exception_info(exc: BaseException) -> tuple[str, str, str]:
    """``(class name as :func:`ktasks.errors.exception_name` gives it, message, formatted traceback)``."""
    stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return exception_name(exc), str(exc), stack


def _truncate(text: str, limit: int, keep_tail: bool) -> bytes:
    """UTF-8 bytes of ``text`` cut to ``limit``; a traceback keeps its head and (longer) tail."""
    data = text.encode("utf-8", "replace")
    if len(data) <= limit:
        return data
    marker = f"\n... [{len(data) - limit} bytes cut by ktasks] ...\n".encode()
    room = max(0, limit - len(marker))
    if keep_tail:
        head = room // 4
        cut = data[:head] + marker + data[len(data) - (room - head):]
    else:
        cut = data[:room] + marker
    return cut.decode("utf-8", "ignore").encode("utf-8")


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dead_letter_record(dl: DeadLetter, max_bytes: int | None = None
                       ) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """The dead-letter record for ``dl``: ``(value, key, headers)``.

    Value and key are the original's, unchanged. The headers are the original
    ones minus any left by an earlier dead-lettering, then the headers listed
    in this module's docstring. The exception message and stack trace are cut
    to :data:`MAX_EXC_MESSAGE_BYTES` / :data:`MAX_STACKTRACE_BYTES`, and
    further if needed so the whole record stays within ``max_bytes``.
    """
    origin = dl.effective_origin_topic
    headers = strip_dead_letter_headers(dl.headers)
    headers += [
        (H_ORIGINAL_TOPIC, dl.topic.encode()),
        (H_ORIGINAL_PARTITION, struct.pack(">i", dl.partition)),
        (H_ORIGINAL_OFFSET, struct.pack(">q", dl.offset)),
        (H_ORIGINAL_TIMESTAMP, struct.pack(">q", dl.timestamp_ms)),
    ]
    if dl.timestamp_type in _TIMESTAMP_TYPES:
        headers.append((H_ORIGINAL_TIMESTAMP_TYPE, _TIMESTAMP_TYPES[dl.timestamp_type].encode()))
    headers.append((H_ORIGINAL_GROUP, dl.group.encode()))
    if dl.exc_type is not None:
        headers.append((H_EXC_FQCN, dl.exc_type.encode()))
    if dl.value_dropped is not None:
        headers.append((H_VALUE_DROPPED, dl.value_dropped.encode()))
    headers += [
        (H_REASON, dl.reason.encode()),
        (H_ATTEMPTS, str(dl.attempts).encode()),
        (H_HOST, dl.host.encode()),
        (H_TIME, _now_iso().encode()),
        (H_ORIGIN_TOPIC, origin.encode()),
    ]
    message = _truncate(dl.exc_message, MAX_EXC_MESSAGE_BYTES, False) if dl.exc_message is not None else None
    stack = _truncate(dl.stacktrace, MAX_STACKTRACE_BYTES, True) if dl.stacktrace is not None else None
    if max_bytes is not None:
        size = (len(dl.value or b"") + len(dl.key or b"") + _RECORD_OVERHEAD
                + sum(len(k) + len(v) + 8 for k, v in headers))
        room = max_bytes - size - 2 * (len(H_EXC_MESSAGE) + 8)
        if message is not None and len(message) > max(room // 4, 256):
            message = _truncate(dl.exc_message or "", max(room // 4, 256), False)
        room -= len(message or b"")
        if stack is not None and len(stack) > max(room, 0):
            stack = _truncate(dl.stacktrace or "", max(room, 512), True)
    if message is not None:
        headers.append((H_EXC_MESSAGE, message))
    if stack is not None:
        headers.append((H_EXC_STACKTRACE, stack))
    return dl.value, dl.key, headers


#: What is kept of the exception message on a dead letter sent without its value.
_SMALL_EXC_MESSAGE_BYTES = 1000


def without_value(dl: DeadLetter, why: str) -> DeadLetter:
    """``dl`` without its value and stack trace, and a short exception message, saying ``why``.

    For a dead letter (or a retry copy) the broker rejected as too large: the record
    still reaches the dead-letter topic with everything needed to find the original
    (topic, partition, offset) and the reason, and its partition moves on.
    """
    size = len(dl.value or b"")
    message = (_truncate(dl.exc_message, _SMALL_EXC_MESSAGE_BYTES, False).decode()
               if dl.exc_message is not None else None)
    # Empty, not None: kafka-python refuses a record with neither key nor value.
    return replace(dl, value=b"", stacktrace=None, exc_message=message,
                   value_dropped=f"value of {size} bytes left out: {why}")


def int_header(headers: Sequence[tuple[str, bytes]], name: str) -> int | None:
    """An integer header in Spring's binary encoding (4 or 8 bytes big-endian) or as decimal text."""
    raw = None
    for k, v in headers:
        if k == name and v is not None:
            raw = v
    if raw is None:
        return None
    if raw.isdigit() or (raw[:1] == b"-" and raw[1:].isdigit()):
        return int(raw)
    if len(raw) == 4:
        return int(struct.unpack(">i", raw)[0])
    if len(raw) == 8:
        return int(struct.unpack(">q", raw)[0])
    return None


@dataclass
class StoredDeadLetter:
    """One record read back from a dead-letter topic, with its headers parsed."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    value: bytes | None
    key: bytes | None
    headers: list[tuple[str, bytes]]

    @classmethod
    def from_record(cls, record: Any) -> StoredDeadLetter:
        return cls(record.topic, record.partition, record.offset, record.timestamp, record.value,
                   record.key, list(record.headers or []))

    def _h(self, name: str) -> str | None:
        return header(self.headers, name)

    @property
    def reason(self) -> str | None:
        return self._h(H_REASON)

    @property
    def attempts(self) -> int | None:
        return int_header(self.headers, H_ATTEMPTS)

    @property
    def host(self) -> str | None:
        return self._h(H_HOST)

    @property
    def time(self) -> str:
        """When it was dead-lettered (ISO 8601); the record's timestamp if the header is missing."""
        stamp = self._h(H_TIME)
        if stamp:
            return stamp
        moment = _dt.datetime.fromtimestamp(self.timestamp_ms / 1000, _dt.timezone.utc)
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")

    @property
    def original_topic(self) -> str | None:
        return self._h(H_ORIGINAL_TOPIC)

    @property
    def original_partition(self) -> int | None:
        return int_header(self.headers, H_ORIGINAL_PARTITION)

    @property
    def original_offset(self) -> int | None:
        return int_header(self.headers, H_ORIGINAL_OFFSET)

    @property
    def original_timestamp_ms(self) -> int | None:
        return int_header(self.headers, H_ORIGINAL_TIMESTAMP)

    @property
    def group(self) -> str | None:
        return self._h(H_ORIGINAL_GROUP)

    @property
    def exc_type(self) -> str | None:
        """The exception class; built-ins without ``builtins.``, also on records older workers wrote."""
        name = self._h(H_EXC_FQCN)
        return normalize_exception_name(name) if name is not None else None

    @property
    def exc_message(self) -> str | None:
        return self._h(H_EXC_MESSAGE)

    @property
    def stacktrace(self) -> str | None:
        return self._h(H_EXC_STACKTRACE)

    def origin_topic(self, dead_letter_suffix: str = ".DLT") -> str:
        """Where a replay goes: ``ktasks-origin-topic``, else Spring's original topic, else the DLT's name
        without its suffix."""
        found = self._h(H_ORIGIN_TOPIC) or self.original_topic
        if found:
            return found
        if dead_letter_suffix and self.topic.endswith(dead_letter_suffix):
            return self.topic[: -len(dead_letter_suffix)]
        return self.topic

    @cached_property
    def _decoded(self) -> tuple[Message | None, str | None]:
        try:
            return decode(self.value), None
        except DecodeError as exc:
            return None, str(exc)

    @property
    def message(self) -> Message | None:
        """The decoded task envelope, or None if the value is not one."""
        return self._decoded[0]

    @property
    def decode_error(self) -> str | None:
        """Why the value does not decode, or None if it does."""
        return self._decoded[1]

    @property
    def task(self) -> str | None:
        message = self.message
        return self._h(HEADER_TASK) or (message.task if message else None)

    @property
    def task_id(self) -> str | None:
        message = self.message
        return self._h(HEADER_ID) or (message.id if message else None)

    def matches_id(self, task_id: str) -> bool:
        """True if the ``ktasks-id`` header or the decoded envelope's id is ``task_id``."""
        if self._h(HEADER_ID) == task_id:
            return True
        message = self.message
        return message is not None and message.id == task_id

    def original_headers(self) -> list[tuple[str, bytes]]:
        """The original record's headers (the dead-letter ones removed)."""
        return strip_dead_letter_headers(self.headers)
