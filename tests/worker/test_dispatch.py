"""Dispatch rules without a broker or children: batching, revoked jobs, max_tasks_per_child, results."""

from __future__ import annotations

import time

from kafka import TopicPartition

from ktasks.worker.protocol import DEAD, OK, RETRY
from tests.worker.statemachine import Machine

TP = TopicPartition("jobs", 0)


def _ready(m: Machine, n: int) -> None:
    m.partitions.start(TP, 0)
    for o in range(n):
        m.dispatcher.queue(m.job(TP, o))


def test_a_task_not_known_to_be_quick_goes_alone() -> None:
    m = Machine(children=2)
    _ready(m, 3)
    m.dispatcher.dispatch()
    assert [c.batches for c in m.pool.children] == [[[0]], [[1]]]
    assert m.dispatcher.in_flight == 2 and len(m.dispatcher.ready) == 1


def test_a_busy_child_running_a_short_task_is_handed_its_next_job() -> None:
    m = Machine(children=2)
    m.dispatcher.durations["quick"] = 0.01       # 10 ms: not batched, but short
    _ready(m, 5)
    m.dispatcher.dispatch()
    # Idle children first, one job each; then one more each, waiting in their pipes.
    assert [c.batches for c in m.pool.children] == [[[0], [2]], [[1], [3]]]
    assert len(m.dispatcher.ready) == 1
    m.dispatcher.dispatch()
    assert [len(c.outstanding) for c in m.pool.children] == [2, 2], "never more than one job ahead"


def test_no_job_waits_behind_a_task_that_is_long_or_not_known() -> None:
    for durations in ({"quick": 0.5}, {}):
        m = Machine(children=2)
        m.dispatcher.durations.update(durations)
        _ready(m, 5)
        m.dispatcher.dispatch()
        assert [c.batches for c in m.pool.children] == [[[0]], [[1]]]


def test_no_job_ahead_of_a_short_task_that_has_run_long_already() -> None:
    m = Machine(children=2)
    m.dispatcher.durations["quick"] = 0.01
    _ready(m, 2)
    m.dispatcher.dispatch()
    # This execution of a usually short task has run for a second: nothing waits behind it.
    m.pool.children[0].since = time.monotonic() - 1.0
    m.pool.children[1].since = time.monotonic()
    for o in range(2, 4):
        m.dispatcher.queue(m.job(TP, o))
    m.dispatcher.dispatch()
    assert [c.batches for c in m.pool.children] == [[[0]], [[1], [2]]]
    assert len(m.dispatcher.ready) == 1


def test_no_job_ahead_past_max_tasks_per_child() -> None:
    m = Machine(children=1, max_tasks_per_child=3)
    m.dispatcher.durations["quick"] = 0.01
    m.pool.children[0].tasks_done = 2
    _ready(m, 3)
    m.dispatcher.dispatch()
    assert m.pool.children[0].batches == [[0]]


def test_quick_tasks_are_batched_and_spread_over_the_children() -> None:
    m = Machine(children=2, max_batch=3)
    m.dispatcher.durations["quick"] = 0.0001
    _ready(m, 10)
    m.dispatcher.dispatch()
    assert [c.batches for c in m.pool.children] == [[[0, 1, 2]], [[3, 4, 5]]], "max_batch caps a batch"


def test_a_batch_never_takes_a_child_past_max_tasks_per_child() -> None:
    m = Machine(children=1, max_tasks_per_child=5)
    m.dispatcher.durations["quick"] = 0.0001
    m.pool.children[0].tasks_done = 3
    _ready(m, 10)
    m.dispatcher.dispatch()
    assert m.pool.children[0].batches == [[0, 1]]


def test_queued_jobs_of_a_revoking_partition_are_not_dispatched() -> None:
    m = Machine(children=1)
    _ready(m, 2)
    ps = m.partitions.get(TP)
    assert ps is not None
    ps.revoking = True
    m.dispatcher.dispatch()
    assert m.pool.children[0].batches == [] and not m.dispatcher.ready


def test_results_complete_retry_or_dead_letter_their_jobs() -> None:
    m = Machine(children=1)
    _ready(m, 3)
    jobs = list(m.dispatcher.ready)
    outcomes = [[jobs[0].seq, OK, 0.001, None, None, None, None],
                [jobs[1].seq, RETRY, 0.001, 2.5, "builtins.ValueError", "x", "tb"],
                [jobs[2].seq, DEAD, 0.001, "not-retriable", "builtins.KeyError", "x", "tb"]]
    for job, res in zip(jobs, outcomes):
        m.outcomes.finish(job, res)
    ps = m.partitions.get(TP)
    assert ps is not None and ps.tracker.committable == 1, "only the success is done; the others wait for Kafka"
    assert m.outbox.sent == [("retry", 1, 2.5), ("dead-letter", 2, "not-retriable")]
    assert m.outcomes.stats.succeeded == 1
    assert m.dispatcher.durations == {}, "durations are learned in collect(), from children's results"
