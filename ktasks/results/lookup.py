"""Looking a result up by task id, from any process: one partition of ``<app>.results``.

The results topic is keyed and partitioned by task id (Kafka's default
partitioner), so a lookup reads one partition only, from the first record not
older than ``result_expires_s`` (``offsets_for_times``) to its end, decoding
only the records whose key is the id. Its cost is therefore the results
stored in the last ``result_expires_s`` divided by ``results_partitions``
(compaction keeps one record per id); at 100 results/s, a 1 h expiry and 12
partitions that is about 30,000 keys compared, a few MB read. A lookup that
has not found the id yet goes on reading new records until its timeout. It
also reads a while before the expiry horizon (``result_expires_s``, but at
least a minute and at most an hour), so a result that expired recently raises
``ResultExpired`` rather than timing out; one the broker already deleted, or
older than that, times out.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

from ..errors import DecodeError, KtasksError
from ..kafka import KafkaConsumer, TopicPartition
from ..kafka.errors import KafkaError
from .records import ResultRecord, ensure_result_topics, partition_for, reader_config, results_topic

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["find_result"]

#: How far past ``result_expires_s`` a lookup still reads, to say ``ResultExpired`` rather than time out:
#: ``result_expires_s`` itself, within these bounds. The floor matters for short expiries, where a
#: lookup made a few seconds late would otherwise time out on a result that merely expired.
EXPIRED_GRACE_MIN_S = 60
EXPIRED_GRACE_MAX_S = 3600


def find_result(app: App, task_id: str, timeout_s: float | None) -> ResultRecord | None:
    """The stored result of ``task_id``, reading until ``timeout_s`` (0: one pass to the end); None if absent."""
    ensure_result_topics(app)
    settings = app.settings
    cfg = reader_config(app, f"{app.client_id}-lookup", "earliest")
    topic = results_topic(app)
    key = task_id.encode()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    try:
        consumer = KafkaConsumer(**cfg)
    except KafkaError as exc:
        raise KtasksError(f"cannot read results from {settings.bootstrap_servers}: {exc}") from exc
    try:
        partitions = consumer.partitions_for_topic(topic)
        if not partitions:
            raise KtasksError(f"topic {topic!r} does not exist")
        tp = TopicPartition(topic, partition_for(task_id, len(partitions)))
        consumer.assign([tp])
        # A little before the expiry horizon too, so a result just expired is reported as such.
        expires_s = settings.result_expires_s
        grace_s = min(max(expires_s, EXPIRED_GRACE_MIN_S), EXPIRED_GRACE_MAX_S)
        since_ms = int((time.time() - expires_s - grace_s) * 1000)
        found = consumer.offsets_for_times({tp: since_ms}).get(tp)
        if found is None:
            consumer.seek_to_end(tp)     # nothing as recent: only what arrives from now on
        else:
            consumer.seek(tp, found.offset)
        end = consumer.end_offsets([tp])[tp]
        best: ResultRecord | None = None
        while True:
            for records in consumer.poll(timeout_ms=200).values():
                for record in records:
                    if record.key != key:
                        continue
                    try:
                        best = ResultRecord.decode(record.value)
                    except DecodeError as exc:
                        logger.warning("result of %s at %s@%d is unreadable: %s", task_id, topic, record.offset,
                                       exc)
            if best is not None and consumer.position(tp) >= end:
                return best
            if deadline is not None and time.monotonic() >= deadline and consumer.position(tp) >= end:
                return best
    except KafkaError as exc:
        raise KtasksError(f"reading the result of {task_id} from {topic}: {exc}") from exc
    finally:
        consumer.close()
