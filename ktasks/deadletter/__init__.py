"""Dead-letter topics: what the worker gives up on, with the context to understand and replay it.

A record the worker cannot or will not run (see :data:`REASONS`) is copied to
the dead-letter topic of its task topic, ``<task topic>.DLT`` by default
(:meth:`ktasks.App.dead_letter_topic`), on the same partition number where
that partition exists. The copy keeps the original value, key and headers
byte for byte and adds headers describing the failure.

=====================  ===========================================================
module                 what
=====================  ===========================================================
:mod:`.record`         the format: building a dead letter's record
                       (:func:`dead_letter_record`) and parsing one read back
                       (:class:`StoredDeadLetter`); no Kafka client
:mod:`.publishing`     sending one (:func:`publish`) within the broker's size limit
:mod:`.admin`          the ``ktasks dlq`` back end: :func:`iter_dead_letters`,
                       :func:`replay`, :func:`purge`, :func:`pending_counts`
=====================  ===========================================================

Every public name of the three is importable from here.
"""

from __future__ import annotations

from ..errors import DeadLetterError
from ..headers import (
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
from ..kafka.errors import is_too_large
from .admin import dead_letter_topics, iter_dead_letters, pending_counts, purge, replay
from .publishing import check_size, publish, topic_max_bytes
from .record import (
    MAX_EXC_MESSAGE_BYTES,
    MAX_STACKTRACE_BYTES,
    REASONS,
    DeadLetter,
    StoredDeadLetter,
    dead_letter_record,
    exception_info,
    int_header,
    without_value,
)

__all__ = [
    "H_ORIGINAL_TOPIC", "H_ORIGINAL_PARTITION", "H_ORIGINAL_OFFSET", "H_ORIGINAL_TIMESTAMP",
    "H_ORIGINAL_TIMESTAMP_TYPE", "H_ORIGINAL_GROUP", "H_EXC_FQCN", "H_EXC_MESSAGE", "H_EXC_STACKTRACE",
    "H_REASON", "H_ATTEMPTS", "H_HOST", "H_TIME", "H_ORIGIN_TOPIC", "H_REPLAY", "H_FORCE", "H_VALUE_DROPPED",
    "REASONS", "MAX_EXC_MESSAGE_BYTES", "MAX_STACKTRACE_BYTES", "DeadLetter", "DeadLetterError",
    "StoredDeadLetter", "dead_letter_record", "publish", "without_value", "is_too_large", "check_size",
    "topic_max_bytes", "exception_info", "is_dead_letter_header", "strip_dead_letter_headers",
    "replay_headers", "int_header", "dead_letter_topics", "iter_dead_letters", "replay", "purge",
    "pending_counts",
]
