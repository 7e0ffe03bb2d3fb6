"""The ledger in the worker: redelivered tasks never run twice; poison messages stop."""

from __future__ import annotations

import signal
import sqlite3
from typing import Any

import pytest

from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until
from tests.worker.test_retries import headers, read_topic


def test_worker_killed_after_ledger_write_before_commit_does_not_run_the_task_again(
        project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def pay(order):
            effect("paid", order=order)
    """, partitions=1)
    marker = p.dir / "fault-fired"
    a = p.worker("-c", "1", env={"KTASKS_FAULTS": f"after_ledger_write=kill-worker@{marker}"})
    a.wait_assigned()
    p.app_module.pay.delay("o-1")
    p.app.flush()
    assert a.wait(60) == -signal.SIGKILL          # killed right after the ledger's success record
    assert marker.exists()
    assert p.committed(kafka_admin).get(0) in (None, 0), "the offset commit never happened"
    b = p.worker("-c", "1")                        # the replacement gets the record again...
    b.wait_for_log("already succeeded", 60)        # ...and the ledger says it is done
    wait_until(lambda: p.committed(kafka_admin).get(0) == 1, 30, message="B committed the skipped record")
    assert [e["order"] for e in p.effects("paid")] == ["o-1"], "the side effect happened once"
    assert b.stop() == 0


def test_same_idempotency_key_enqueued_twice_runs_once(project: Any, kafka_admin: Any) -> None:
    p = project("""
        import time

        @app.task
        def send_email(to):
            time.sleep(0.2)
            effect("sent", to=to)

        @app.task
        def marker(n):
            effect("marker", n=n)
    """, partitions=2)
    w = p.worker("-c", "2")
    w.wait_assigned()
    for _ in range(3):
        p.app_module.send_email.apply_async(args=("a@example.com",), idempotency_key="welcome-a")
    p.app_module.send_email.apply_async(args=("b@example.com",), idempotency_key="welcome-b")
    for n in range(10):
        p.app_module.marker.delay(n)
    p.app.flush()
    wait_effects(p, "marker", 10)
    wait_until(lambda: sum(p.committed(kafka_admin).values()) == 14, 30, message="all 14 records committed")
    assert sorted(e["to"] for e in p.effects("sent")) == ["a@example.com", "b@example.com"]
    assert w.stop() == 0


def test_task_that_kills_its_child_every_time_is_dead_lettered_after_max_starts(project: Any) -> None:
    p = project("""
        @app.task(max_retries=10, max_starts=3, retry_backoff_s=0.05, retry_jitter=False)
        def crash(n):
            effect("start", n=n)
            os._exit(1)

        @app.task
        def fine(n):
            effect("fine", n=n)
    """, partitions=1)
    w = p.worker("-c", "2")
    w.wait_assigned()
    p.app_module.crash.delay(1)
    for n in range(20):
        p.app_module.fine.delay(n)
    p.app.flush()
    dlt = read_topic(p.bootstrap, p.topic + ".DLT", 1)
    assert headers(dlt[0])["ktasks-dlt-reason"] == "poison"
    assert len(p.effects("start")) == 3, "started exactly max_starts times"
    wait_effects(p, "fine", 20)                    # the worker kept serving the others
    assert w.log().count("died") >= 3
    p.app_module.fine.delay(99)                    # and still does
    p.app.flush()
    wait_until(lambda: any(e["n"] == 99 for e in p.effects("fine")), 30, message="worker still serving")
    assert w.stop() == 0


PAYMENTS = """
@app.task(bind=True, ledger_transaction=True)
def charge(ctx, order, amount):
    ctx.ledger.execute("CREATE TABLE IF NOT EXISTS payments (order_id TEXT, amount INT)")
    ctx.ledger.execute("INSERT INTO payments VALUES (?, ?)", (order, amount))
    effect("charged", order=order)
"""


@pytest.mark.parametrize("point", ["before_task", "after_task", "after_ledger_write"])
def test_ledger_transaction_write_is_exactly_once_under_a_kill(project: Any, kafka_admin: Any,
                                                              point: str) -> None:
    p = project(PAYMENTS, partitions=1)
    marker = p.dir / "fault-fired"
    a = p.worker("-c", "1", env={"KTASKS_FAULTS": f"{point}=kill-worker@{marker}"})
    a.wait_assigned()
    p.app_module.charge.delay("o-42", 1999)
    p.app.flush()
    assert a.wait(60) == -signal.SIGKILL
    b = p.worker("-c", "1")
    b.wait_assigned()
    wait_until(lambda: p.committed(kafka_admin).get(0) == 1, 60, message="the record was finished and committed")
    con = sqlite3.connect(p.ledger_path)
    rows = con.execute("SELECT order_id, amount FROM payments").fetchall()
    con.close()
    assert rows == [("o-42", 1999)], f"payment written exactly once (killed at {point})"
    assert b.stop() == 0


def test_many_children_writing_the_ledger_at_once_raise_no_lock_errors(project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task(bind=True, ledger_transaction=True)
        def write(ctx, n):
            ctx.ledger.execute("CREATE TABLE IF NOT EXISTS rows (n INT)")
            ctx.ledger.execute("INSERT INTO rows VALUES (?)", (n,))

        @app.task
        def noop(n):
            pass
    """, partitions=4)
    w = p.worker("-c", "4")
    w.wait_assigned()
    for n in range(400):
        (p.app_module.write if n % 2 else p.app_module.noop).delay(n)
    p.app.flush()
    wait_until(lambda: sum(p.committed(kafka_admin).values()) == 400, 120, message="400 tasks committed")
    assert w.stop() == 0
    log = w.log()
    assert "locked" not in log and "LedgerError" not in log
    con = sqlite3.connect(p.ledger_path)
    assert con.execute("SELECT count(*) FROM rows").fetchone()[0] == 200
    con.close()


def test_one_idempotency_key_given_to_two_tasks_runs_both(project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def charge(invoice):
            effect("charged", invoice=invoice)

        @app.task
        def send_receipt(invoice):
            effect("receipt", invoice=invoice)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    p.app_module.charge.apply_async(args=("invoice-42",), idempotency_key="invoice-42")
    p.app_module.send_receipt.apply_async(args=("invoice-42",), idempotency_key="invoice-42")
    p.app_module.charge.apply_async(args=("invoice-42",), idempotency_key="invoice-42")  # a real duplicate
    p.app.flush()
    wait_until(lambda: p.committed(kafka_admin).get(0) == 3, 60, message="all 3 records committed")
    assert [e["invoice"] for e in p.effects("charged")] == ["invoice-42"]
    assert [e["invoice"] for e in p.effects("receipt")] == ["invoice-42"], "the receipt was sent"
    assert w.log().count("already succeeded") == 1
    assert w.stop() == 0


def test_a_live_start_is_never_a_crash_however_long_it_runs(project: Any, kafka_admin: Any) -> None:
    # The duplicates wait past one whole wait on the ledger (half the hard time limit, at most
    # 60 s: 10 s here) and wait again, and the time limit does not count that wait against
    # them: still no second copy, and the live start does not count toward max_starts (two
    # more starts would make it poison).
    p = project("""
        import time

        @app.task(max_starts=2, time_limit_s=20)
        def report(n):
            effect("started", n=n)
            time.sleep(14)
            effect("done", n=n)
    """, partitions=1)
    w = p.worker("-c", "3")
    w.wait_assigned()
    # Record keys of their own: without one the idempotency key is the record key, and the
    # copies would wait in line for their key instead of meeting in two children at once.
    for i in range(3):
        p.app_module.report.apply_async(args=(1,), idempotency_key="report-1", key=f"copy-{i}")
    p.app.flush()
    wait_until(lambda: p.committed(kafka_admin).get(0) == 3, 150, message="all 3 records committed")
    assert len(p.effects("started")) == 1, "one copy ran"
    assert len(p.effects("done")) == 1
    log = w.log()
    assert "is still running in pid" in log and "instead of running a second copy" in log
    assert log.count("already succeeded") == 2
    assert "poison" not in log
    assert w.stop() == 0
