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


def _short_tasks_running(m: Machine, ran_s: float = 0.0) -> None:
    """Two children each running their first job, a task of 10 ms on average: not batched, but short."""
    m.dispatcher.durations["quick"] = 0.01
    _ready(m, 5)
    m.dispatcher.dispatch()
    for child in m.pool.children:
        child.start(next(iter(child.outstanding)), ran_s)


def test_a_busy_child_running_a_short_task_is_handed_its_next_job() -> None:
    m = Machine(children=2)
    _short_tasks_running(m)
    m.dispatcher.dispatch()
    # Idle children first, one job each; then one more each, waiting in their pipes.
    assert [c.batches for c in m.pool.children] == [[[0], [2]], [[1], [3]]]
    assert [c.ahead for c in m.pool.children] == [list(c.outstanding)[1] for c in m.pool.children]
    assert len(m.dispatcher.ready) == 1
    m.dispatcher.dispatch()
    assert [len(c.outstanding) for c in m.pool.children] == [2, 2], "never more than one job ahead"


def test_no_job_ahead_of_a_long_or_unknown_task_of_one_already_running_long_or_between_jobs() -> None:
    for durations, ran_s in (({"quick": 0.5}, 0.0), ({}, 0.0), ({"quick": 0.01}, 1.0)):
        m = Machine(children=2)
        _ready(m, 5)
        m.dispatcher.dispatch()
        m.dispatcher.durations.update(durations)
        for child in m.pool.children:
            child.start(next(iter(child.outstanding)), ran_s)
        m.dispatcher.dispatch()
        assert [c.batches for c in m.pool.children] == [[[0]], [[1]]], (durations, ran_s)
    m = Machine(children=1)
    _short_tasks_running(m)
    m.pool.children[0].finish()          # done, its result not read yet
    m.dispatcher.dispatch()
    assert m.pool.children[0].batches == [[0]]


def test_no_job_ahead_past_max_tasks_per_child() -> None:
    m = Machine(children=1, max_tasks_per_child=3)
    m.pool.children[0].tasks_done = 2
    _short_tasks_running(m)
    m.dispatcher.dispatch()
    assert m.pool.children[0].batches == [[0]]


def test_a_job_ahead_of_a_task_that_turns_slow_is_taken_back_and_goes_first_to_the_next_free_child() -> None:
    m = Machine(children=2)
    _short_tasks_running(m)
    m.dispatcher.dispatch()
    slow, other = m.pool.children
    ahead = slow.ahead
    assert ahead is not None
    m.dispatcher.take_back_waiting()
    assert slow.ahead == ahead, "not before the task in front has run LOOKAHEAD_TASK_S"
    slow.start(0, ran_s=0.2)
    m.dispatcher.take_back_waiting()
    assert slow.ahead is None and ahead not in slow.outstanding and slow.state[2] == float(ahead)
    assert m.dispatcher.in_flight == 3
    job = m.dispatcher.ready[0]
    assert job.offset == 2 and job.seq < 0, "first in line again, under a seq the child never saw"
    # The other child finishes both its jobs: the taken-back job is the next it gets.
    other.outstanding.clear()
    m.dispatcher.in_flight -= 2
    other.finish()
    m.dispatcher.dispatch()
    assert other.batches[-1] == [2]


def test_a_job_ahead_the_child_has_started_is_not_taken_back() -> None:
    m = Machine(children=1)
    _short_tasks_running(m)
    m.dispatcher.dispatch()
    child = m.pool.children[0]
    ahead = child.ahead
    assert ahead is not None
    child.start(ahead, ran_s=0.2)          # the child claimed it (its task before it ended)
    m.dispatcher.take_back_waiting()
    assert ahead in child.outstanding and child.ahead is None and child.state[2] == 0.0
    # A child holding the claim lock (killed mid-claim): nothing is taken, the loop goes on.
    m2 = Machine(children=1)
    _short_tasks_running(m2)
    m2.dispatcher.dispatch()
    c2 = m2.pool.children[0]
    c2.start(0, ran_s=0.2)
    c2.claim_lock.acquire()
    m2.dispatcher.take_back_waiting()
    assert c2.ahead is not None and len(c2.outstanding) == 2
