"""Dispatch rules without a broker or children: batching, revoked jobs, max_tasks_per_child, results."""

from __future__ import annotations

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
