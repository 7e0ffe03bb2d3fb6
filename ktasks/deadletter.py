"""Dead-letter topics: what the worker gives up on, with the context to understand and replay it.

A record the worker cannot or will not run (see :data:`REASONS`) is copied to
the dead-letter topic of its task topic, ``<task topic>.DLT`` by default
(:meth:`ktasks.App.dead_letter_topic`), on the same partition number where
that partition exists. The copy keeps the original value, key and headers
byte for byte and adds headers describing the failure. Where Spring Kafka has
a header for it, the header has Spring's name and encoding, so tools built for
Spring's ``DeadLetterPublishingRecoverer`` read ktasks' dead letters too:

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

The worker builds a :class:`DeadLetter` and calls :func:`publish`; the
``ktasks dlq`` commands use :func:`iter_dead_letters`, :func:`replay` and
:func:`purge`. Kafka topics are append-only: a replayed record stays in the
dead-letter topic until :func:`purge` (or the topic's retention) removes it.
"""

from __future__ import annotations

import datetime as _dt
import logging
import socket
import struct
import time
import traceback
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING, Any, cast

from .errors import DecodeError, KtasksError, exception_name, normalize_exception_name
from .headers import (
    H_ATTEMPTS,
    H_EXC_FQCN,
    H_EXC_MESSAGE,
    H_EXC_STACKTRACE,
    H_FORCE,
    H_HOST,
    H_ORIGIN_TOPIC,
    H_ORIGINAL_GROUP,
    H_ORIGINAL_OFFSET,
    H_ORIGINAL_PARTITION,
    H_ORIGINAL_TIMESTAMP,
    H_ORIGINAL_TIMESTAMP_TYPE,
    H_ORIGINAL_TOPIC,
    H_REASON,
    H_REPLAY,
    H_TIME,
    H_VALUE_DROPPED,
    is_dead_letter_header,
    replay_headers,
    strip_dead_letter_headers,
)
from .kafka import ConfigResource, ConfigResourceType, KafkaConsumer, OffsetSpec, TopicPartition, reader
from .kafka.errors import KafkaError, MessageSizeTooLargeError, is_too_large
from .message import HEADER_ID, HEADER_TASK, Message, decode, header

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger(__name__)

__all__ = [
    "H_ORIGINAL_TOPIC", "H_ORIGINAL_PARTITION", "H_ORIGINAL_OFFSET", "H_ORIGINAL_TIMESTAMP",
    "H_ORIGINAL_TIMESTAMP_TYPE", "H_ORIGINAL_GROUP", "H_EXC_FQCN", "H_EXC_MESSAGE", "H_EXC_STACKTRACE",
    "H_REASON", "H_ATTEMPTS", "H_HOST", "H_TIME", "H_ORIGIN_TOPIC", "H_REPLAY", "H_FORCE", "H_VALUE_DROPPED",
    "REASONS", "DeadLetter", "DeadLetterError", "StoredDeadLetter",
    "dead_letter_record", "publish", "without_value", "is_too_large", "check_size", "topic_max_bytes", "exception_info", "is_dead_letter_header", "strip_dead_letter_headers",
    "replay_headers", "int_header", "dead_letter_topics", "iter_dead_letters", "replay", "purge", "pending_counts",
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


class DeadLetterError(KtasksError):
    """A dead-letter topic could not be read, replayed or purged."""

    retriable = True


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


#: Kafka's default ``max.message.bytes`` of a topic (``message.max.bytes`` of the broker).
_KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1048588
#: A record batch's own bytes around one record (batch header, record framing), rounded up.
_BATCH_OVERHEAD = 128
_topic_limits: dict[tuple[str, str], int] = {}


def topic_max_bytes(app: App, topic: str) -> int | None:
    """The largest record batch ``topic`` accepts (its ``max.message.bytes``), or None if unknown.

    Looked up once per topic. Knowing it matters: kafka-python 3.0.12's idempotent
    producer treats a broker's "too large" answer as fatal, and fails every record it
    sends afterwards.
    """
    cache_key = (app.settings.bootstrap_servers, topic)
    if cache_key not in _topic_limits:
        try:
            described = app.topics.admin().describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
        except (KafkaError, KtasksError) as exc:
            logger.debug("cannot read max.message.bytes of %s: %s", topic, exc)
            return None
        # Only settings that differ from the broker's defaults are listed.
        entry = (described.get("topic") or {}).get(topic) or {}
        value = (entry.get("max.message.bytes") or {}).get("value")
        _topic_limits[cache_key] = int(value) if value else _KAFKA_DEFAULT_MAX_MESSAGE_BYTES
    return _topic_limits[cache_key]


def check_size(app: App, topic: str, value: bytes | None, key: bytes | None,
               headers: Sequence[tuple[str, bytes]]) -> None:
    """Raise ``MessageSizeTooLargeError`` before sending a record ``topic`` would reject as too large."""
    limit = topic_max_bytes(app, topic)
    size = (len(value or b"") + len(key or b"") + _BATCH_OVERHEAD
            + sum(len(k.encode()) + len(v or b"") + 8 for k, v in headers))
    if limit is not None and size > limit:
        raise MessageSizeTooLargeError(f"a record of about {size} bytes is over {topic}'s max.message.bytes={limit}")


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


def publish(app: App, dl: DeadLetter, dlt_partitions: int | None = None) -> Any:
    """Send ``dl`` to its dead-letter topic; returns kafka-python's ``FutureRecordMetadata``.

    The topic is ``app.dead_letter_topic(origin)``. It is created on first use
    (when ``auto_create_topics`` is on) with as many partitions as the origin
    topic. The record goes to partition ``dl.partition`` when the dead-letter
    topic has it (``dlt_partitions``, else looked up once and cached by the
    app's topic manager); otherwise the producer's partitioner chooses.

    Raises :class:`~ktasks.errors.EnqueueError` if the send cannot even be
    queued; a failed delivery shows in the future. The caller must not commit
    the original offset until the future succeeded.
    """
    origin = dl.effective_origin_topic
    topic = app.dead_letter_topic(origin)
    if dlt_partitions is None:
        dlt_partitions = app.topics.partitions_of(topic)
        if dlt_partitions is None:
            app.ensure_topics([topic], partitions=app.topics.partitions_of(origin))
            dlt_partitions = app.topics.partitions_of(topic)
    partition = dl.partition if dlt_partitions is not None and 0 <= dl.partition < dlt_partitions else None
    if partition is None:
        logger.warning("dead-letter topic %s: no partition %d (%s); the partitioner chooses", topic,
                       dl.partition, "not found" if dlt_partitions is None else f"{dlt_partitions} partitions")
    max_bytes = max(app.settings.max_message_bytes, 1048576)
    value, key, headers = dead_letter_record(dl, max_bytes=max_bytes)
    logger.info("dead-lettering %s[%d]@%d to %s (reason %s, %s)", dl.topic, dl.partition, dl.offset,
                topic, dl.reason, dl.exc_type or "no exception")
    # send_raw is typed for bytes, but a tombstone (None) is a valid record value to keep.
    return app.send_raw(topic, cast(bytes, value), key=key, headers=headers, partition=partition)


# -- reading back -----------------------------------------------------------------

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


def dead_letter_topics(app: App, topic: str | None = None) -> list[str]:
    """The dead-letter topics to work on.

    With no ``topic``: the DLT of every task topic of the app. A ``topic`` that
    already ends with the dead-letter suffix is taken as it is; any other is
    taken as a task topic and mapped to its DLT.
    """
    suffix = app.settings.dead_letter_suffix
    if topic is None:
        return [app.dead_letter_topic(t) for t in app.task_topics()]
    if suffix and topic.endswith(suffix):
        return [topic]
    return [app.dead_letter_topic(topic)]


def _consumer(app: App) -> KafkaConsumer:
    """A consumer without a group: it reads by assignment and never commits anything."""
    try:
        return reader(app.settings, f"{app.client_id}-dlq")
    except KafkaError as exc:
        raise DeadLetterError(f"cannot connect to Kafka at {app.settings.bootstrap_servers}: {exc}") from exc


def _partitions(app: App, topics: Iterable[str]) -> list[TopicPartition]:
    tps: list[TopicPartition] = []
    for topic in topics:
        count = app.topics.partitions_of(topic)
        if count is None:
            logger.info("dead-letter topic %s does not exist", topic)
            continue
        tps.extend(TopicPartition(topic, p) for p in range(count))
    return tps


def _offsets(app: App, tps: list[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
    """``{partition: (earliest, end)}`` as the admin client reports them now."""
    if not tps:
        return {}
    admin = app.topics.admin()
    try:
        earliest = admin.list_partition_offsets({tp: OffsetSpec.EARLIEST for tp in tps})
        latest = admin.list_partition_offsets({tp: OffsetSpec.LATEST for tp in tps})
    except KafkaError as exc:
        raise DeadLetterError(f"listing offsets of {sorted({tp.topic for tp in tps})}: {exc}") from exc
    return {tp: (earliest[tp].offset, latest[tp].offset) for tp in tps}


def pending_counts(app: App, topics: Iterable[str]) -> dict[TopicPartition, tuple[int, int]]:
    """``{partition: (earliest offset, end offset)}`` of the given dead-letter topics that exist.

    ``end - earliest`` is the number of records a purge would remove.
    """
    return _offsets(app, _partitions(app, topics))


def iter_dead_letters(app: App, topics: Iterable[str], *, tail: int | None = None,
                      idle_timeout_s: float = 30.0) -> Iterator[StoredDeadLetter]:
    """Read dead-letter topics from the start (or the last ``tail`` records of each partition) to
    their current end, then stop.

    Uses a consumer without a group (assign and seek), so it never commits and
    never disturbs a worker. Records appended after the call started are not
    read. Raises :class:`DeadLetterError` if no record arrives for
    ``idle_timeout_s`` while some are still expected.
    """
    tps = _partitions(app, topics)
    bounds = {tp: b for tp, b in _offsets(app, tps).items() if b[1] > b[0]}
    if not bounds:
        return
    consumer = _consumer(app)
    try:
        consumer.assign(list(bounds))
        for tp, (start, end) in bounds.items():
            consumer.seek(tp, max(start, end - tail) if tail else start)
        remaining = {tp: end for tp, (_, end) in bounds.items()}
        deadline = time.monotonic() + idle_timeout_s
        while remaining:
            if time.monotonic() > deadline:
                raise DeadLetterError(
                    f"reading {sorted({tp.topic for tp in remaining})}: nothing received for "
                    f"{idle_timeout_s:g} s with {len(remaining)} partition(s) not read to the end")
            batch = consumer.poll(timeout_ms=200)
            for tp, records in batch.items():
                stop = remaining.get(tp)
                if stop is None:
                    continue
                for record in records:
                    if record.offset >= stop:
                        break
                    yield StoredDeadLetter.from_record(record)
                deadline = time.monotonic() + idle_timeout_s
            for tp in list(remaining):
                if consumer.position(tp) >= remaining[tp]:
                    del remaining[tp]
                    consumer.pause(tp)
    finally:
        consumer.close()


def replay(app: App, letter: StoredDeadLetter, force: bool = False) -> Any:
    """Republish a dead letter's original value and key for its origin topic; returns the send future.

    The record goes to the origin topic's first retry tier, which the
    origin's workers consume and run at once (its due time, if any, is past):
    the worker trusts the replay marks only on its retry topics (see
    :mod:`ktasks.headers`). Headers are the original ones plus
    ``ktasks-origin-topic``, ``ktasks-replay: 1`` (and ``ktasks-force: 1``
    with ``force``, which makes the worker run it even if its ledger recorded
    a success). The dead letter itself stays where it is. The topic is
    created if it is missing (when ``auto_create_topics`` is on). Raises
    :class:`~ktasks.errors.EnqueueError` if the send cannot be queued.
    """
    origin = letter.origin_topic(app.settings.dead_letter_suffix)
    topic = app.retry_topic(origin, app.delay_tier_ms(0))
    app.ensure_topics([topic])
    logger.info("replaying %s[%d]@%d (id %s) to %s via %s%s", letter.topic, letter.partition, letter.offset,
                letter.task_id, origin, topic, " (forced)" if force else "")
    return app.send_raw(topic, cast(bytes, letter.value), key=letter.key,
                        headers=replay_headers(letter.headers, force, origin_topic=origin))


def purge(app: App, topics: Iterable[str],
          bounds: dict[TopicPartition, tuple[int, int]] | None = None) -> int:
    """Delete every record of the given dead-letter topics up to their end offsets; returns how many.

    ``bounds`` (from :func:`pending_counts`) fixes the end offsets, so records
    that arrive after an operator confirmed are kept. Uses the admin client's
    ``delete_records``: the records are gone for every reader.
    """
    if bounds is None:
        bounds = pending_counts(app, topics)
    todo = {tp: end for tp, (start, end) in bounds.items() if end > start}
    if not todo:
        return 0
    try:
        result = app.topics.admin().delete_records(todo, timeout_ms=max(app.settings.send_timeout_ms, 5000))
    except KafkaError as exc:
        raise DeadLetterError(f"deleting records of {sorted({tp.topic for tp in todo})}: {exc}") from exc
    removed = 0
    for tp, end in todo.items():
        info = result.get(tp) or {}
        if info.get("error_code"):
            raise DeadLetterError(f"deleting records of {tp.topic}[{tp.partition}]: error code "
                                  f"{info['error_code']}")
        removed += end - bounds[tp][0]
    logger.info("purged %d dead letters from %s", removed, sorted({tp.topic for tp in todo}))
    return removed
