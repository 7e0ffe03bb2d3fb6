"""``--transactional``: a task's follow-up records and its offset commit happen together, or not at all."""

from __future__ import annotations

import signal
import sqlite3
from typing import Any

from ktasks.kafka import KafkaConsumer
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

SOURCE = """
@app.task(store_result=True)
def order(n):
    effect("order", n=n)
    ship.delay(n)
    return n * 10

@app.task
def ship(n):
    effect("ship", n=n)

@app.task
def warm_up():
    effect("warm_up")
"""


def read_all(bootstrap: str, topic: str, isolation: str, settle_s: float = 3.0) -> list[Any]:
    """Every record of ``topic`` visible at ``isolation`` (read until nothing new came for ``settle_s``)."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, isolation_level=isolation)
    records: list[Any] = []
    try:
        quiet = 0.0
        while quiet < settle_s:
            got = [r for batch in consumer.poll(500).values() for r in batch]
            records.extend(got)
            quiet = 0.0 if got else quiet + 0.5
    finally:
        consumer.close()
    return records


def task_names(records: list[Any]) -> list[str]:
    return [dict(r.headers).get("ktasks-task", b"").decode() for r in records
            if not dict(r.headers).get("ktasks-task", b"").endswith(b".warm_up")]


def arm_after_warm_up(p: Any, kafka_admin: Any, marker: Any) -> None:
    """Let the fault guarded by ``marker`` fire at the next transaction, one that holds a task's records.

    The first commit of a partition can hold its start position alone (a record was taken, none
    finished yet); a fault that fired there would miss the task's records. A warm-up task is
    run and committed first, with the fault held back by ``marker``, which is then removed.
    """
    p.app_module.warm_up.delay()
    p.app.flush()
    wait_until(lambda: (p.committed(kafka_admin).get(0) or 0) >= 1, 60, message="the warm-up committed")
    marker.unlink()


def test_a_worker_killed_before_its_transaction_commits_leaves_no_follow_up_and_it_runs_once_after(
        project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=1)
    marker = p.dir / "fault-fired"
    marker.touch()                               # held back until the warm-up committed
    a = p.worker("-c", "1", "--transactional", env={"KTASKS_FAULTS": f"transaction_prepared=kill-worker@{marker}"})
    a.wait_assigned()
    arm_after_warm_up(p, kafka_admin, marker)
    handle = p.app_module.order.delay(1)
    p.app.flush()
    assert a.wait(60) == -signal.SIGKILL       # killed with the follow-up sent and the transaction open
    assert marker.exists()
    assert p.committed(kafka_admin).get(0) == 1, "only the warm-up's offset was committed"
    sent = task_names(read_all(p.bootstrap, p.topic, "read_uncommitted"))
    assert [t.rsplit(".", 1)[-1] for t in sent] == ["order", "ship"], f"the follow-up was sent: {sent}"
    visible = task_names(read_all(p.bootstrap, p.topic, "read_committed"))
    assert not [t for t in visible if t.endswith("ship")], f"a read_committed reader saw the follow-up: {visible}"

    b = p.worker("-c", "1", "--transactional")     # same slot: fences A's transaction, which the broker aborts
    b.wait_assigned()
    wait_effects(p, "ship", 1)
    assert handle.get(timeout=60) == 10, "the result, sent in B's transaction, reached the waiting sender"
    wait_until(lambda: (p.committed(kafka_admin).get(0) or 0) >= 5, 60,
               message="B committed the order and its follow-up")
    assert b.stop() == 0
    assert [e["n"] for e in p.effects("ship")] == [1], "the follow-up ran exactly once"
    assert len(p.effects("order")) == 2, "the task itself ran again (its first run's records were aborted)"
    ships = [t for t in task_names(read_all(p.bootstrap, p.topic, "read_committed")) if t.endswith("ship")]
    assert len(ships) == 1, f"read_committed readers see the follow-up once: {ships}"
    with sqlite3.connect(p.ledger_path) as db:
        states = dict(db.execute("SELECT task, state FROM ktasks_ledger").fetchall())
    assert set(states.values()) == {"succeeded"}, states


def test_transactional_worker_runs_chains_and_results_without_a_kill(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE + """
@app.task(store_result=True)
def add(x, y):
    return x + y
""", partitions=2)
    w = p.worker("-c", "2", "--transactional")
    w.wait_assigned()
    from ktasks import chain

    mod = p.app_module
    handles = [mod.order.delay(n) for n in range(20)]
    c = chain(mod.add.s(1, 2), mod.add.s(10), mod.add.s(100)).delay()
    assert [h.get(timeout=60) for h in handles] == [n * 10 for n in range(20)]
    assert c.get(timeout=60) == 113
    wait_effects(p, "ship", 20)
    assert w.stop() == 0
    assert sorted(e["n"] for e in p.effects("ship")) == list(range(20))
    assert "transaction aborted" not in w.log()


def test_a_failed_transactional_commit_aborts_and_the_tasks_run_again_with_their_follow_ups_once(
        project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=1)
    # The commit of order's transaction fails while the worker lives: its follow-up and result are aborted.
    # The fault is after the transaction's records were flushed, so the aborted copy is in the log: a
    # failure before the flush (at "commit") could abort records the producer had not sent yet.
    marker = p.dir / "fault-fired"
    marker.touch()
    w = p.worker("-c", "1", "--transactional", env={"KTASKS_FAULTS": f"transaction_prepared=raise-retriable@{marker}"})
    w.wait_assigned()
    arm_after_warm_up(p, kafka_admin, marker)
    handle = p.app_module.order.delay(7)
    p.app.flush()
    assert handle.get(timeout=60) == 70
    wait_effects(p, "ship", 1)
    wait_until(lambda: (p.committed(kafka_admin).get(0) or 0) >= 3, 60, message="order and ship committed")
    assert w.stop() == 0
    assert "transaction aborted" in w.log()
    assert len(p.effects("order")) == 2, "the aborted task ran again"
    assert [e["n"] for e in p.effects("ship")] == [7], "its follow-up ran once: the aborted copy was never seen"
    ships = [t for t in task_names(read_all(p.bootstrap, p.topic, "read_uncommitted")) if t.endswith("ship")]
    assert len(ships) == 2, f"two copies were sent, one of them aborted: {ships}"
