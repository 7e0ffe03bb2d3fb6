"""The worker's partition state machine without a broker: epochs, offsets, keys, holds and pauses."""

from __future__ import annotations

from kafka import TopicPartition

from ktasks.worker.protocol import OK
from tests.worker.statemachine import Machine

TP = TopicPartition("jobs", 0)


def test_a_fresh_assignment_starts_at_the_committed_offset_with_a_new_epoch() -> None:
    m = Machine()
    first = m.partitions.start(TP, 5)
    assert m.consumer.seeks == [(TP, 5)]
    assert first.tracker.committable == 5
    again = m.partitions.start(TP, None)
    assert again.epoch == first.epoch + 1
    assert m.consumer.seeks[-1] == (TP, "beginning"), "no commit: auto_offset_reset=earliest"


def test_an_old_epochs_completion_is_fenced_and_not_committed() -> None:
    m = Machine()
    m.partitions.start(TP, 0)
    old = m.job(TP, 0)
    m.partitions.start(TP, 0)          # revoked and assigned again: a new epoch
    m.outcomes.finish(old, [old.seq, OK, 0.001, None, None, None, None])
    ps = m.partitions.get(TP)
    assert ps is not None and ps.tracker.committable == 0 and not ps.finished
    assert m.outcomes.stats.succeeded == 0


def test_offsets_become_committable_only_below_the_first_unfinished_record() -> None:
    m = Machine()
    m.partitions.start(TP, 10)
    jobs = [m.job(TP, o) for o in (10, 11, 12)]
    m.outcomes.complete(jobs[1])
    m.outcomes.complete(jobs[2])
    ps = m.partitions.get(TP)
    assert ps is not None
    assert ps.tracker.committable == 10, "record 10 still runs"
    assert ps.tracker.finished_above() == {11, 12}, "the offset map tells the next owner"
    m.outcomes.complete(jobs[0])
    assert ps.tracker.committable == 13 and sorted(ps.finished) == [10, 11, 12]


def test_records_of_one_key_run_one_at_a_time_in_offset_order() -> None:
    m = Machine()
    m.partitions.start(TP, 0)
    a, b, c, other = m.job(TP, 0, b"k"), m.job(TP, 1, b"k"), m.job(TP, 2, b"k"), m.job(TP, 3, b"x")
    assert [m.partitions.take_key(j) for j in (a, b, c, other)] == [True, False, False, True]
    m.outcomes.complete(a)
    assert list(m.dispatcher.ready) == [b], "the key's next record goes to the front of the ready queue"
    m.outcomes.complete(b)
    m.outcomes.complete(c)
    ps = m.partitions.get(TP)
    assert ps is not None and b"k" not in ps.keys, "the key is free once its last record finished"


def test_a_partition_pauses_at_the_prefetch_limit_and_resumes_at_half() -> None:
    m = Machine(prefetch=4)
    ps = m.partitions.start(TP, 0)
    jobs = [m.job(TP, o) for o in range(4)]
    m.partitions.update_pause(ps)
    assert TP in m.consumer.paused()
    m.outcomes.complete(jobs[0])
    assert TP in m.consumer.paused(), "3 in flight: above half, still paused"
    m.outcomes.complete(jobs[1])
    assert TP not in m.consumer.paused()


def test_a_hold_seeks_back_and_pauses_until_its_time_then_releases() -> None:
    m = Machine()
    ps = m.partitions.start(TP, 0)
    m.job(TP, 0)
    m.job(TP, 1)
    m.partitions.hold(ps, 1, until=1000.0, capped=True)
    assert m.consumer.seeks[-1] == (TP, 1) and TP in m.consumer.paused()
    assert ps.tracker.in_flight == 1 and ps.capped_hold == 1, "record 1 comes again"
    m.partitions.release_holds(999.0)
    assert TP in m.consumer.paused()
    m.partitions.release_holds(1000.0)
    assert ps.hold_until is None and TP not in m.consumer.paused()


def test_the_consumers_paused_flag_wins_after_a_reassignment() -> None:
    m = Machine()
    m.consumer.pause(TP)               # kept by kafka-python across an eager revoke and assign
    ps = m.partitions.start(TP, 0)
    assert not ps.paused
    m.partitions.sync_paused()
    assert TP not in m.consumer.paused(), "nothing in flight: resumed instead of paused forever"


def test_dropping_a_partition_forgets_its_queued_jobs() -> None:
    m = Machine()
    other = TopicPartition("jobs", 1)
    m.partitions.start(TP, 0)
    m.partitions.start(other, 0)
    m.dispatcher.queue(m.job(TP, 0))
    kept = m.job(other, 0)
    m.dispatcher.queue(kept)
    m.partitions.drop([TP])
    assert list(m.dispatcher.ready) == [kept] and TP not in m.partitions
