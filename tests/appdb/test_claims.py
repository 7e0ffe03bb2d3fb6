"""``ctx.claim(conn)``: the idempotency key commits with the task's writes; a second claim is refused.

SQLite and the real PostgreSQL; the worker test kills a worker after the task's
transaction committed and before its ledger record and offset commit.
"""

from __future__ import annotations

import psycopg
import pytest

from ktasks import App
from ktasks.appdb.claims import claim, is_claimed
from ktasks.errors import AlreadyClaimed
from tests.fixtures.appdb import AppDb
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until


def test_second_claim_of_a_committed_key_fails_and_leaves_the_transaction_usable(appdb: AppDb) -> None:
    first = appdb.connect()
    claim(first, "k1", "t", "id-1")
    first.execute(f"INSERT INTO orders VALUES ({appdb.p}, {appdb.p})", ("o-1", 1))
    first.commit()
    second = appdb.connect()
    with pytest.raises(AlreadyClaimed, match="k1"):
        claim(second, "k1", "t", "id-2")
    claim(second, "k2", "t", "id-3")  # the transaction still works after the refused claim
    second.commit()
    assert is_claimed(second, "k1") and is_claimed(second, "k2") and appdb.count("ktasks_claims") == 2
    first.close()
    second.close()


def test_a_rolled_back_claim_does_not_count(appdb: AppDb) -> None:
    conn = appdb.connect()
    claim(conn, "k1", "t", "id-1")
    conn.rollback()
    claim(conn, "k1", "t", "id-2")
    conn.commit()
    assert appdb.count("ktasks_claims") == 1
    conn.close()


def test_task_whose_claim_is_refused_is_done_and_its_writes_are_not_repeated(appdb: AppDb) -> None:
    app = App("claims", eager=True)

    @app.task(name="claims.pay", bind=True)
    def pay(ctx, order_id: str) -> str:  # type: ignore[no-untyped-def]
        conn = appdb.connect()
        try:
            ctx.claim(conn)
            conn.execute(f"INSERT INTO orders VALUES ({appdb.p}, {appdb.p})", (order_id, 1))
            conn.commit()
        finally:
            conn.close()
        return "paid"

    assert pay.apply_async(["o-1"], idempotency_key="pay-o-1").get() == "paid"
    app.eager_ledger.reset()  # another host: its ledger never saw the first run, the database did
    assert pay.apply_async(["o-1"], idempotency_key="pay-o-1").get() is None  # no IntegrityError: done
    assert appdb.count("orders") == 1


CLAIMING = '''
import psycopg

DSN = {dsn!r}

@app.task(name="claims.charge", bind=True)
def charge(ctx, order_id, cents):
    with psycopg.connect(DSN) as conn:  # commits at the end of the block
        ctx.claim(conn)
        conn.execute("INSERT INTO charges (order_id, cents) VALUES (%s, %s)", (order_id, cents))
    effect("charged", order_id=order_id)
'''


@pytest.mark.slow
def test_task_killed_after_its_transaction_committed_is_not_applied_twice(project: object, pg_dsn: str,
                                                                        tmp_path: object) -> None:
    from ktasks.appdb import create_schema

    with psycopg.connect(pg_dsn) as conn:
        create_schema(conn)
        conn.execute("CREATE TABLE charges (order_id TEXT NOT NULL, cents INTEGER NOT NULL)")
    p = project(CLAIMING.format(dsn=pg_dsn))  # type: ignore[operator]
    marker = p.dir / "killed"
    handles = [p.app.tasks["claims.charge"].delay(f"o-{n}", 100 + n) for n in range(5)]
    for h in handles:
        h.wait_sent(timeout=30)
    # after_task: the task returned (its transaction committed), the ledger has no success record and
    # the offset is not committed: the worker dies exactly there, once.
    first = p.worker("-c", "1", env={"KTASKS_FAULTS": f"after_task=kill-worker@{marker}"})
    wait_until(lambda: first.proc.poll() is not None, 60, message="the fault never killed the worker")
    wait_effects(p, "charged", 1)
    second = p.worker("-c", "1")
    wait_effects(p, "charged", 5)
    second.wait_for_log("already claimed in the application database")
    assert second.stop() == 0
    with psycopg.connect(pg_dsn) as conn:
        charges = conn.execute("SELECT order_id, count(*) FROM charges GROUP BY order_id").fetchall()
    assert sorted(charges) == [(f"o-{n}", 1) for n in range(5)]
    assert len(p.effects("charged")) == 5
