"""Publishing a dead letter: its topic and partition, and the broker's size limit.

The worker builds a :class:`~ktasks.deadletter.record.DeadLetter` and calls
:func:`publish`; before sending a retry or dead-letter copy it checks it
fits with :func:`check_size`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, cast

from ..errors import KtasksError
from ..kafka import ConfigResource, ConfigResourceType
from ..kafka.errors import KafkaError, MessageSizeTooLargeError
from .record import DeadLetter, dead_letter_record

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["publish", "check_size", "topic_max_bytes"]

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
