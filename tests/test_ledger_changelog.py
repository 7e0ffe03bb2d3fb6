"""The ledger changelog's batches and backpressure, broker-free: a fake producer whose acknowledgements the test gives."""

from __future__ import annotations

from typing import Any

from ktasks.kafka import OffsetAndMetadata, TopicPartition
from ktasks.ledger import SUCCEEDED
from ktasks.ledger_changelog import BATCH_MAX_ENTRIES, LedgerChangelog
from ktasks.ledger_restore import decode_all
from ktasks.middleware import Dispatched, TaskEvent
from ktasks.settings import Settings
from ktasks.worker import offsetmap


class FakeFuture:
    def __init__(self, record: tuple[Any, ...]) -> None:
        self.is_done = False
        self.ok = False
        self.exception: Exception | None = None
        self.record = record

    def succeeded(self) -> bool:
        return self.ok

    def ack(self) -> None:
        self.is_done = self.ok = True

    def fail(self) -> None:
        self.is_done, self.exception = True, RuntimeError("broker said no")


class FakeApp:
    def __init__(self) -> None:
        self.futures: list[FakeFuture] = []
        self.client_id = "test"
        outer = self

        class Producer:
            def get(self) -> Any:
                return self

            def send(self, topic: str, value: bytes, key: bytes, partition: int) -> FakeFuture:
                outer.futures.append(FakeFuture((topic, partition, key, value)))
                return outer.futures[-1]

        self.producer = Producer()


def changelog(limit: int, tmp_path: Any) -> tuple[LedgerChangelog, FakeApp]:
    app = FakeApp()
    settings = Settings({"ledger_changelog_max_unacked": limit})
    mw = LedgerChangelog(app, settings, str(tmp_path / "ledger.sqlite3"), {"t": "t.ledger"},  # type: ignore[arg-type]
                         {"t.ledger": 1})
    return mw, app


def run(mw: LedgerChangelog, offsets: range) -> None:
    mw.tasks_dispatched([Dispatched("t", 0, o, "task", f"id-{o}") for o in offsets])


def finish(mw: LedgerChangelog, offsets: range, partition: int = 0) -> None:
    """One round of results: each task's finish, then the round's end."""
    for o in offsets:
        mw.task_finished(TaskEvent("task", f"id-{o}", "succeeded", "t", partition, o, ledger_key=f"id-{o}"))
    mw.results_collected()


def test_running_and_unacknowledged_tasks_share_the_limit_and_the_hold_ends_below_half(tmp_path: Any) -> None:
    mw, app = changelog(10, tmp_path)
    assert mw.dispatch_room() == 10
    run(mw, range(0, 4))
    assert mw.dispatch_room() == 6
    finish(mw, range(0, 4))                    # finished, not acknowledged: still at risk
    assert mw.dispatch_room() == 6
    run(mw, range(4, 10))
    assert mw.dispatch_room() == 0             # 4 waiting + 6 running: held
    finish(mw, range(4, 6))
    finish(mw, range(6, 10))
    assert len(app.futures) == 3               # one record per round
    app.futures[0].ack()
    mw._swept_at = 0.0
    assert mw.dispatch_room() == 0             # 6 of 10 wait: still above half
    app.futures[1].ack()
    mw._swept_at = 0.0
    assert mw.dispatch_room() == 6             # 4 wait: under half, the hold ends
    app.futures[2].ack()
    mw._swept_at = 0.0
    assert mw.dispatch_room() == 10


def test_a_limit_of_0_means_no_limit(tmp_path: Any) -> None:
    mw, _ = changelog(0, tmp_path)
    run(mw, range(0, 100))
    assert mw.dispatch_room() is None


def commit(mw: LedgerChangelog, partition: int, offset: int) -> OffsetAndMetadata:
    return mw.commit_offsets({TopicPartition("t", partition): OffsetAndMetadata(offset, "", -1)},
                             False)[TopicPartition("t", partition)]


def test_a_round_of_finishes_is_one_record_per_partition_and_the_commit_waits_for_it(tmp_path: Any) -> None:
    app = FakeApp()
    mw = LedgerChangelog(app, Settings({}), str(tmp_path / "l.sqlite3"), {"t": "t.ledger"},  # type: ignore[arg-type]
                         {"t.ledger": 2})
    run(mw, range(0, 5))
    for o in range(0, 5):    # partitions 0 and 1 interleaved, as results arrive
        mw.task_finished(TaskEvent("task", f"id-{o}", "succeeded", "t", o % 2, o, ledger_key=f"id-{o}"))
    assert app.futures == []                   # nothing written before the round ends
    mw.results_collected()
    by_partition = {f.record[1]: f for f in app.futures}
    assert sorted(by_partition) == [0, 1] and len(app.futures) == 2
    topic, _, key, value = by_partition[0].record
    assert topic == "t.ledger"
    assert [(t.key, t.state) for t in decode_all(key, value)] == [("id-0", SUCCEEDED), ("id-2", SUCCEEDED),
                                                                ("id-4", SUCCEEDED)]
    # Unacknowledged: partition 0's commit stays at its first finished record.
    assert commit(mw, 0, 5).offset == 0
    by_partition[0].ack()
    assert commit(mw, 0, 5).offset == 5
    assert commit(mw, 1, 4).offset == 1
    assert mw.unacked() == 2


def test_a_failed_batch_is_sent_again_once_before_the_commit(tmp_path: Any) -> None:
    mw, app = changelog(0, tmp_path)
    finish(mw, range(10, 14))
    app.futures[0].fail()
    lowered = commit(mw, 0, 20)
    assert lowered.offset == 10
    assert len(app.futures) == 2, "the batch is sent again once, not once per record in it"
    assert app.futures[1].record == app.futures[0].record
    # Finished records above 13 that are not in the batch still count in the offset map.
    assert set(offsetmap.decode(lowered.metadata, lowered.offset)) == set(range(14, 20))
    app.futures[1].ack()
    assert commit(mw, 0, 20).offset == 20 and mw.unacked() == 0


def test_a_round_larger_than_a_batch_is_split(tmp_path: Any) -> None:
    mw, app = changelog(0, tmp_path)
    finish(mw, range(0, BATCH_MAX_ENTRIES + 3))
    sizes = [len(decode_all(f.record[2], f.record[3])) for f in app.futures]
    assert sizes == [BATCH_MAX_ENTRIES, 3]


def test_finishes_of_a_revoked_partition_not_yet_written_are_dropped(tmp_path: Any) -> None:
    app = FakeApp()
    mw = LedgerChangelog(app, Settings({}), str(tmp_path / "l.sqlite3"), {"t": "t.ledger"},  # type: ignore[arg-type]
                         {"t.ledger": 1})
    for p in (0, 1):
        mw.task_finished(TaskEvent("task", f"id-{p}", "succeeded", "t", p, 7, ledger_key=f"id-{p}"))
    mw.partitions_revoked([TopicPartition("t", 1)])
    mw.results_collected()
    [f] = app.futures
    assert [t.key for t in decode_all(f.record[2], f.record[3])] == ["id-0"]
    assert mw.unacked() == 1


def test_a_send_timing_out_on_the_broker_ends_the_pass_instead_of_each_send_waiting_in_turn(tmp_path: Any) -> None:
    # With the broker down each send blocks send_timeout_ms (10 s) before it raises: a final
    # commit resending N batches stalled a warm shutdown N times 10 s.
    from kafka.errors import KafkaTimeoutError

    app = FakeApp()
    mw = LedgerChangelog(app, Settings({}), str(tmp_path / "l.sqlite3"), {"t": "t.ledger"},  # type: ignore[arg-type]
                         {"t.ledger": 3})
    attempts: list[int] = []
    send = app.producer.send
    down = True

    def timing_out(topic: str, value: bytes, key: bytes, partition: int) -> FakeFuture:
        attempts.append(partition)
        if down:
            raise KafkaTimeoutError("Failed to update metadata after 10.0 secs.")
        return send(topic, value, key, partition)

    app.producer.send = timing_out  # type: ignore[method-assign]
    run(mw, range(0, 6))
    for o in range(0, 6):
        mw.task_finished(TaskEvent("task", f"id-{o}", "succeeded", "t", 0, o, ledger_key=f"id-{o}"))
        mw.task_finished(TaskEvent("task", f"id-{o}", "succeeded", "t", 1, o, ledger_key=f"id-{o}"))
    mw.results_collected()
    assert len(attempts) == 1, "the second partition's batch waited on the broker too"
    out = mw.commit_offsets({TopicPartition("t", p): OffsetAndMetadata(6, "", -1) for p in (0, 1)}, final=True)
    assert len(attempts) == 2 and {om.offset for om in out.values()} == {0}   # nothing committed past them
    down = False
    out = mw.commit_offsets({TopicPartition("t", p): OffsetAndMetadata(6, "", -1) for p in (0, 1)}, final=True)
    assert len(app.futures) == 2     # both batches sent once the broker takes them
    for f in app.futures:
        f.ack()
    out = mw.commit_offsets({TopicPartition("t", p): OffsetAndMetadata(6, "", -1) for p in (0, 1)}, final=False)
    assert {om.offset for om in out.values()} == {6}
