"""Restoring a ledger changelog partition into a local ledger: the merge rules and the checkpoint."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from kafka import KafkaProducer, TopicPartition

from ktasks.errors import DecodeError
from ktasks.ledger import FAILED, POISONED, STARTED, SUCCEEDED, Ledger
from ktasks.ledger_restore import (
    Restorer,
    Transition,
    decode,
    decode_all,
    encode_batch,
    encode_key,
    encode_value,
    records_of,
)
from ktasks.message import pack
from ktasks.settings import Settings
from tests.helpers import create_topic


def produce(bootstrap: str, topic: str, partition: int, transitions: list[Transition], garbage: int = 0,
            batch: bool = False) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for key, value in [encode_batch(transitions)] if batch else records_of(transitions):
        producer.send(topic, key=key, value=value, partition=partition)
    for _ in range(garbage):
        producer.send(topic, key=b"not msgpack \xc1", value=b"\xc1", partition=partition)
    producer.flush()
    producer.close()


def test_a_transition_round_trips_and_a_bad_record_is_named() -> None:
    t = Transition("k1", "app.work", STARTED, 1700000000.5, 2, 1, "host-a", 123, 456)
    assert decode(encode_key("k1", "app.work"), encode_value(t)) == t
    for key, value, text in ((None, b"x", "without a key"), (b"\xc1", b"\x80", "not msgpack"),
                             (encode_key("k", "t"), b"\x80", "unknown version")):
        try:
            decode(key, value)
        except DecodeError as exc:
            assert text in str(exc)
        else:
            raise AssertionError(f"{key!r}/{value!r} decoded")


def test_a_batch_round_trips_in_order_under_a_key_of_its_own_and_a_bad_entry_is_named() -> None:
    ts = [Transition("k1", "app.work", SUCCEEDED, 1700000000.5),
          Transition("k2", "app.work", POISONED, 1700000001.0, starts=3),
          Transition("k1", "app.other", FAILED, 1700000002.0, attempt=2, host="h", pid=7, pid_start=9)]
    key, value = encode_batch(ts)
    assert decode_all(key, value) == ts
    assert encode_batch(ts)[0] != key          # compaction must never merge two batches
    assert decode_all(*records_of(ts[:1])[0]) == ts[:1]
    bad = pack({"v": 2, "e": [["k", "t", SUCCEEDED, 1.0, 0, 0, None, None, None], ["k", "t", "bogus"]]})
    with pytest.raises(DecodeError, match="entry 1"):
        decode_all(key, bad)
    with pytest.raises(DecodeError, match="3 transitions"):
        decode(key, value)


def test_restore_merges_transitions_and_reads_only_past_its_checkpoint(
        tmp_path: Path, kafka_bootstrap: str, kafka_admin: Any, unique: Any) -> None:
    topic = unique("tasks") + ".ledger"
    create_topic(kafka_admin, topic, partitions=2, configs={"cleanup.policy": "compact"})
    path = tmp_path / "ledger.sqlite3"
    local = Ledger(path)
    # Local history: a success the changelog must not undo, a start of this host.
    local.succeeded("done-here", None, 0.1, task="t")
    local.flush()
    now = 1_800_000_000.0
    produce(kafka_bootstrap, topic, 1, [
        Transition("done-there", "t", SUCCEEDED, now),
        Transition("done-here", "t", FAILED, now),            # older news never undoes a success
        Transition("crashed", "t", STARTED, now, starts=3, host="other-host", pid=1, pid_start=1),
    ], garbage=1)
    # The worker writes finishes in batches: one record, applied in order after the records above.
    produce(kafka_bootstrap, topic, 1, [Transition("poison", "t", POISONED, now, starts=3),
                                        Transition("failed", "t", FAILED, now)], batch=True)
    produce(kafka_bootstrap, topic, 0, [Transition("other-partition", "t", SUCCEEDED, now)])
    restorer = Restorer(Settings(bootstrap_servers=kafka_bootstrap), path, "test")
    try:
        [r] = restorer.restore([TopicPartition(topic, 1)], 30.0)
        assert r.complete and (r.applied, r.skipped, r.start, r.end) == (5, 1, None, 5)
        assert local.begin("done-there", "t", 0, 3).kind == "skip"
        assert local.begin("done-here", "t", 0, 3).kind == "skip"
        assert local.begin("crashed", "t", 0, 3).kind == "poison"      # 3 starts elsewhere
        assert local.begin("poison", "t", 0, 3).kind == "poison"
        assert local.begin("failed", "t", 1, 3).kind == "run"
        assert local.get("other-partition", task="t") is None           # not this partition
        # Again: nothing new past the checkpoint, nothing applied.
        [again] = restorer.restore([TopicPartition(topic, 1)], 30.0)
        assert (again.start, again.applied) == (5, 0)
        produce(kafka_bootstrap, topic, 1, [Transition("later", "t", SUCCEEDED, now)])
        [later] = restorer.restore([TopicPartition(topic, 1)], 30.0)
        assert (later.start, later.applied, later.end) == (5, 1, 6)
        assert local.begin("later", "t", 0, 3).kind == "skip"
        assert restorer.checkpoints()[TopicPartition(topic, 1)] == 6
    finally:
        restorer.close()
        local.close()


def test_a_start_restored_over_a_live_local_start_keeps_the_local_owner(
        tmp_path: Path, kafka_bootstrap: str, kafka_admin: Any, unique: Any) -> None:
    topic = unique("tasks") + ".ledger"
    create_topic(kafka_admin, topic, partitions=1)
    path = tmp_path / "ledger.sqlite3"
    local = Ledger(path)
    assert local.begin("k", "t", 0, 5).kind == "run"                   # started here, by this live process
    produce(kafka_bootstrap, topic, 0, [Transition("k", "t", STARTED, 1.0, starts=2, host="elsewhere", pid=7)])
    restorer = Restorer(Settings(bootstrap_servers=kafka_bootstrap), path, "test")
    try:
        [r] = restorer.restore([TopicPartition(topic, 0)], 30.0)
        assert r.applied == 1
    finally:
        restorer.close()
    entry = local.get("k", task="t")
    assert entry is not None and entry.state == STARTED
    assert (entry.starts, entry.pid) == (2, os.getpid()) and entry.host != "elsewhere"
    local.close()
