"""Intake without a broker: dead-lettering what cannot run, and short deferrals held in memory by key."""

from __future__ import annotations

from typing import Any

from kafka import TopicPartition

from ktasks import Defer, Middleware
from ktasks.message import Message, encode
from ktasks.worker.intake import DEFER_IN_MEMORY_S, RecordIntake
from tests.worker.statemachine import Machine, Record

TP = TopicPartition("jobs", 0)


class Hold(Middleware):
    """Defers every record whose first argument is in ``until`` (a dict it is given) to that time."""

    def __init__(self, until: dict[int, float]) -> None:
        self.until = until

    def intake(self, record: Any) -> Defer | None:
        when = self.until.get(record.message.args[0])
        return Defer(when) if when is not None else None


def _intake(m: Machine, until: dict[int, float]) -> RecordIntake:
    m.app.add_middleware(Hold(until))
    intake = RecordIntake(m.app, m.partitions, None, m.outbox, m.outcomes,  # type: ignore[arg-type]
                          m.dispatcher.queue, retry_topics={}, tier_s={}, ready_first=m.dispatcher.queue_first)
    m.outcomes._release = intake.release
    m.partitions.start(TP, 0)
    return intake


def _record(offset: int, n: int, key: bytes | None = None, task: str = "quick") -> Record:
    return Record(TP.topic, TP.partition, offset, encode(Message(task=task, args=[n])), key)


def test_records_that_cannot_run_are_dead_lettered_and_the_rest_queue() -> None:
    m = Machine()
    intake = _intake(m, {})
    intake.accept(TP, [_record(0, 0), Record(TP.topic, 0, 1, b"\x00junk"), _record(2, 2, task="nope")])
    assert [j.offset for j in m.dispatcher.ready] == [0]
    assert m.outbox.sent == [("dead-letter", 1, "undecodable"), ("dead-letter", 2, "unregistered")]


def test_a_short_deferral_waits_in_memory_keeping_its_key_and_not_its_partition(monkeypatch: Any) -> None:
    clock = [1000.0]
    monkeypatch.setattr("ktasks.worker.intake.time.time", lambda: clock[0])
    m = Machine()
    intake = _intake(m, {0: 1001.0})
    intake.accept(TP, [_record(0, 0, b"k"), _record(1, 1, b"k"), _record(2, 2, b"other")])
    assert [j.offset for j in m.dispatcher.ready] == [2], "the other key is not held up"
    assert intake.deferred == 1 and intake.next_deferred_s(clock[0]) == 1.0
    intake.release_deferred(1000.5)
    assert [j.offset for j in m.dispatcher.ready] == [2], "not before its time"
    intake.release_deferred(1001.0)
    assert [j.offset for j in m.dispatcher.ready] == [2, 0], "offered again at its time, and let through"
    assert intake.deferred == 0
    m.dispatcher.ready.clear()
    first = m.partitions.get(TP).keys  # type: ignore[union-attr]
    assert [j.offset for j in first[b"k"]] == [1], "the key's next record waited behind the deferred one"


def test_a_deferral_beyond_the_memory_limit_goes_to_a_delay_tier(monkeypatch: Any) -> None:
    monkeypatch.setattr("ktasks.worker.intake.time.time", lambda: 1000.0)
    m = Machine()
    intake = _intake(m, {0: 1000.0 + DEFER_IN_MEMORY_S + 1})
    intake.accept(TP, [_record(0, 0)])
    assert intake.deferred == 0 and m.outbox.sent == [("delay", 0, 1000.0 + DEFER_IN_MEMORY_S + 1)]


def test_a_partition_keeps_only_a_quarter_of_its_prefetch_in_memory(monkeypatch: Any) -> None:
    monkeypatch.setattr("ktasks.worker.intake.time.time", lambda: 1000.0)
    m = Machine(prefetch=8)
    intake = _intake(m, {n: 1001.0 for n in range(4)})
    intake.accept(TP, [_record(o, o) for o in range(4)])
    assert intake.deferred == 2
    assert [kind for kind, _, _ in m.outbox.sent] == ["delay", "delay"]
