"""The worker's partition state across assignments, revokes and lost partitions (issue 11).

These tests drive the real worker in the test process (tests/worker/inproc.py):
real children, a real consumer in the test's group, the real broker, with the
rebalance callbacks called where kafka-python would call them.
"""

from __future__ import annotations

from typing import Any

from kafka.errors import KafkaTimeoutError
from kafka.structs import OffsetAndMetadata

from ktasks.message import Message, encode
from tests.fixtures.app import end_offsets
from tests.fixtures.worker import wait_effects

SOURCE = """
@app.task
def note(n):
    effect("note", n=n)
"""


def test_a_partition_assigned_again_while_the_consumer_kept_it_paused_is_fetched(project: Any,
                                                                                 inproc: Any) -> None:
    p = project(SOURCE, partitions=1)
    h = inproc(p)
    [tp] = h.start([0])
    w = h.worker
    # An eager rebalance: revoke, then assign the same partition again. kafka-python keeps the
    # paused flag of a partition that comes back; the worker's fresh state says "not paused".
    w.consumer.pause(tp)
    w._on_revoked([tp])
    w._on_assigned([tp])
    for n in range(3):
        p.app_module.note.delay(n)
    p.app.flush()
    h.step_until(lambda: len(p.effects("note")) >= 3, 30, "the partition was never fetched again")
    assert sorted(e["n"] for e in wait_effects(p, "note", 3)) == [0, 1, 2]


def test_a_failed_committed_offset_lookup_is_retried_not_read_as_no_commit(project: Any, inproc: Any) -> None:
    p = project(SOURCE, partitions=1, auto_offset_reset="latest")
    for n in range(5):
        p.app_module.note.delay(n)
    p.app.flush()
    h = inproc(p)
    failures = []

    def flaky_lookups(consumer: Any) -> None:
        # The group committed offset 3 (records 0-2 done); then the coordinator stops answering
        # for a while: the first lookups time out, as kafka-python reports a broker stall.
        consumer.commit({h.tp(0): OffsetAndMetadata(3, "", -1)})
        real = consumer.committed

        def committed(tp: Any, *args: Any, **kwargs: Any) -> Any:
            if len(failures) < 2:
                failures.append(tp)
                raise KafkaTimeoutError("OffsetFetch timed out")
            return real(tp, *args, **kwargs)

        consumer.committed = committed

    h.start([0], before_assign=flaky_lookups)
    h.step_until(lambda: len(p.effects("note")) >= 2, 30,
                 "records after the committed offset never ran (the worker guessed a start position)")
    h.step_until(lambda: h.worker.partitions[h.tp(0)].tracker.committed == 5, 30, "offset 5 committed")
    assert sorted(e["n"] for e in p.effects("note")) == [3, 4]
    assert len(failures) == 2, "the lookup was tried again after each failure"


def test_records_fetched_before_the_assignment_callback_start_at_the_committed_offset(
        project: Any, inproc: Any) -> None:
    p = project(SOURCE, partitions=1)
    for n in range(10):
        p.app_module.note.delay(n)
    p.app.flush()
    h = inproc(p)

    def fetched_ahead(consumer: Any) -> None:
        # The group committed offset 2; kafka-python's position is 5 (after an eager revoke and
        # assign it keeps the position it had fetched up to), and records come before the
        # worker's assignment callback ran.
        consumer.commit({h.tp(0): OffsetAndMetadata(2, "", -1)})
        consumer.seek(h.tp(0), 5)

    h.start([0], before_assign=fetched_ahead, notify=False)
    h.step_until(lambda: (ps := h.worker.partitions.get(h.tp(0))) is not None and ps.tracker.committed == 10,
                 60, "offset 10 committed")
    assert sorted(e["n"] for e in p.effects("note")) == list(range(2, 10)), \
        "every record from the committed offset on ran; none was committed without running"


def test_results_of_a_lost_assignment_publish_nothing(project: Any, inproc: Any, kafka_bootstrap: str) -> None:
    p = project("""
        @app.task(max_retries=3)
        def fails_late(n):
            effect("started", n=n)
            while not os.path.exists(EFFECTS + ".go"):
                time.sleep(0.02)
            raise IOError("failed after its partition moved")
    """, partitions=1)
    h = inproc(p)
    [tp] = h.start([0])
    p.app_module.fails_late.delay(1)
    p.app.flush()
    h.step_until(lambda: p.effects("started"), 30, "the task started")
    # The partition is taken away while the task runs (its new owner runs the record again).
    thread, _ = h.in_thread(lambda: h.worker._on_lost([tp]))
    thread.join(30)
    (p.dir / "effects.jsonl.go").write_text("")
    h.step_until(lambda: h.worker._in_flight == 0, 30, "the task's failure came back")
    h.worker._pump_publishes()
    p.app.flush()
    for topic in p.app.retry_topics(p.topic) + [p.app.dead_letter_topic(p.topic)]:
        assert sum(end_offsets(kafka_bootstrap, topic).values()) == 0, \
            f"a retry or dead letter of the lost assignment was published to {topic}"


def send_to(project: Any, partition: int, task: str, *args: Any, due: float | None = None) -> None:
    """Enqueue ``task(*args)`` on one partition of the project's task topic."""
    value = encode(Message(task=f"{project.module}.{task}", args=list(args), due=due))
    project.app.send_raw(project.topic, value, partition=partition)


def test_a_revoke_waiting_for_a_task_stalls_only_the_revoked_partition(project: Any, inproc: Any) -> None:
    p = project(SOURCE + """
@app.task
def slow(n):
    effect("slow", n=n)
    while not os.path.exists(EFFECTS + ".go"):
        time.sleep(0.02)
""", partitions=2)
    h = inproc(p, concurrency=2, revoke_timeout_ms=15000)
    tp0, tp1 = h.start([0, 1])
    send_to(p, 0, "slow", 0)
    p.app.flush()
    h.step_until(lambda: p.effects("slow"), 30, "the slow task started")
    revoke, _ = h.in_thread(lambda: h.worker._on_revoked([tp0]))
    for n in range(3):
        send_to(p, 1, "note", n)
    p.app.flush()
    h.step_until(lambda: len(p.effects("note")) >= 3, 10, "partition 1 went on during partition 0's revoke")
    assert revoke.is_alive(), "the revoke is still waiting for partition 0's task"
    (p.dir / "effects.jsonl.go").write_text("")
    h.step_until(lambda: not revoke.is_alive(), 30, "the revoke ended once the task finished")
    assert tp0 not in h.worker.partitions and tp1 in h.worker.partitions
    assert p.committed(p.app.topics.admin()).get(0) == 1, "the finished task was committed before the release"
