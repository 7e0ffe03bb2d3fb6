"""The offset tracker: what is safe to commit when records finish out of order."""

from __future__ import annotations

from ktasks.worker.offsets import OffsetTracker


def test_commits_only_below_the_first_unfinished_record() -> None:
    t = OffsetTracker()
    for offset in range(100, 110):
        t.add(offset)
    assert t.committable == 100
    for offset in (101, 102, 105, 109):
        t.done(offset)
    assert t.committable == 100          # 100 still running: nothing above it may be committed
    t.done(100)
    assert t.committable == 103          # 100..102 finished, 103 is the first unfinished
    for offset in (103, 104, 106, 107, 108):
        t.done(offset)
    assert t.committable == 110          # all done: just past the last record taken
    assert t.in_flight == 0


def test_needs_commit_tracks_what_was_committed() -> None:
    t = OffsetTracker()
    t.add(0)
    t.done(0)
    assert t.needs_commit()
    t.mark_committed(1)
    assert not t.needs_commit()
    t.add(1)
    assert not t.needs_commit()          # record 1 running: committable is still 1
    t.done(1)
    assert t.needs_commit() and t.committable == 2


def test_rewind_forgets_records_that_will_come_again() -> None:
    t = OffsetTracker()
    for offset in range(5):
        t.add(offset)
    t.done(0)
    t.done(3)
    t.rewind(2)                          # a seek back to 2: records 2..4 are delivered again
    assert t.committable == 1
    t.add(2)
    t.done(1)
    assert t.committable == 2
    t.done(2)
    assert t.committable == 3            # 3 finished before the rewind but was forgotten: it runs again


def test_redelivery_below_the_last_offset_rewinds() -> None:
    t = OffsetTracker()
    t.add(10)
    t.add(11)
    t.add(10)                            # delivered again after a seek
    assert t.committable == 10
    t.done(10)
    assert t.committable == 11
