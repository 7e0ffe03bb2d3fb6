"""The ``ktasks dlq`` back end against the real broker: read, tail, replay and purge."""

from __future__ import annotations

from typing import Any

from ktasks import App
from ktasks.deadletter import (
    H_FORCE,
    H_ORIGIN_TOPIC,
    H_REPLAY,
    dead_letter_topics,
    iter_dead_letters,
    pending_counts,
    publish,
    purge,
    replay,
)
from ktasks.message import header
from tests.deadletter.samples import TIMEOUT_S, sample
from tests.fixtures.app import read_topic
from tests.helpers import UniqueNames, create_topic


def test_read_tail_replay_and_purge(app: App, kafka_admin: Any, kafka_bootstrap: str,
                                    unique: UniqueNames) -> None:
    origin = unique("orders")
    create_topic(kafka_admin, origin, partitions=2)
    dlt_topic = f"{origin}.DLT"
    assert dead_letter_topics(app, origin) == [dlt_topic] == dead_letter_topics(app, dlt_topic)
    # Nothing there yet: reading a topic that does not exist yields nothing and creates nothing.
    assert list(iter_dead_letters(app, [dlt_topic])) == []
    assert app.topics.partitions_of(dlt_topic) is None

    sent = []
    for i in range(5):
        dl = sample(topic=origin, partition=i % 2)
        dl.offset = i
        sent.append(dl)
        publish(app, dl).get(timeout=TIMEOUT_S)
    letters = list(iter_dead_letters(app, [dlt_topic], idle_timeout_s=TIMEOUT_S))
    assert sorted(x.original_offset or 0 for x in letters) == [0, 1, 2, 3, 4]
    tail = list(iter_dead_letters(app, [dlt_topic], tail=1, idle_timeout_s=TIMEOUT_S))
    assert sorted(x.original_offset or 0 for x in tail) == [3, 4]  # the newest of each partition

    # Replay: the original value and key back for the origin topic, through its first retry tier
    # (the worker trusts the replay marks on its retry topics only), marked.
    target = next(x for x in letters if x.original_offset == 2)
    meta = replay(app, target, force=True).get(timeout=TIMEOUT_S)
    assert meta.topic == app.retry_topic(origin, min(app.settings.retry_tiers_ms))
    [record] = read_topic(kafka_bootstrap, meta.topic, 1)
    assert record.value == sent[2].value and record.key == sent[2].key
    assert header(record.headers, H_REPLAY) == "1" and header(record.headers, H_FORCE) == "1"
    assert header(record.headers, H_ORIGIN_TOPIC) == origin
    assert not [k for k, _ in record.headers if k.startswith(("kafka_dlt-", "ktasks-dlt-"))]

    counts = pending_counts(app, [dlt_topic])
    assert sum(end - start for start, end in counts.values()) == 5
    assert purge(app, [dlt_topic]) == 5
    assert list(iter_dead_letters(app, [dlt_topic])) == []
    assert purge(app, [dlt_topic]) == 0
