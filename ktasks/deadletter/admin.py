"""The ``ktasks dlq`` back end: list, show, replay and purge dead letters.

Kafka topics are append-only: a replayed record stays in the dead-letter
topic until :func:`purge` (or the topic's retention) removes it. Reading uses
a consumer without a group, so it never commits and never disturbs a worker.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, cast

from ..errors import DeadLetterError
from ..headers import replay_headers
from ..kafka import KafkaConsumer, OffsetSpec, TopicPartition, reader
from ..kafka.errors import KafkaError
from .record import StoredDeadLetter

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["dead_letter_topics", "iter_dead_letters", "pending_counts", "replay", "purge"]


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
