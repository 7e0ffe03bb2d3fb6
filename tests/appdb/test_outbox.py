"""``app.outbox(conn)``: the row commits or rolls back with the caller's transaction; delay()'s checks apply.

Broker-free: the app points at a closed port, and nothing here may reach Kafka.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from ktasks import App
from ktasks.appdb.outbox import unpack_headers
from ktasks.errors import AppDatabaseError, EncodeError, MessageTooLarge
from ktasks.message import decode
from tests.fixtures.appdb import AppDb


@pytest.fixture
def offline_app(closed_port: int) -> App:
    app = App("shop", bootstrap_servers=f"127.0.0.1:{closed_port}", send_timeout_ms=500,
              max_message_bytes=4096)

    @app.task(name="shop.confirm")
    def confirm(order_id: str) -> None: ...

    return app


def test_rolled_back_transaction_leaves_no_outbox_row(offline_app: App, appdb: AppDb) -> None:
    conn = appdb.connect()
    conn.execute(f"INSERT INTO orders VALUES ({appdb.p}, {appdb.p})", ("o-1", 10))
    entry = offline_app.outbox(conn).delay(offline_app.tasks["shop.confirm"], "o-1")
    conn.rollback()
    conn.close()
    assert appdb.count("orders") == 0 and appdb.count() == 0
    assert entry.id  # the call itself succeeded: the rollback is what removed it


def test_committed_row_holds_the_same_record_delay_would_send(offline_app: App, appdb: AppDb) -> None:
    conn = appdb.connect()
    conn.execute(f"INSERT INTO orders VALUES ({appdb.p}, {appdb.p})", ("o-2", 20))
    entry = offline_app.outbox(conn).apply_async("shop.confirm", args=["o-2"], key="customer-7",
                                                 headers={"trace": "t1"})
    conn.commit()
    row = conn.execute("SELECT id, topic, key, value, headers, task_id FROM ktasks_outbox").fetchone()
    conn.close()
    assert row[0] == entry.row_id and row[1] == entry.topic == "shop.tasks" and bytes(row[2]) == b"customer-7"
    message = decode(bytes(row[3]))
    assert (message.task, message.args, message.id) == ("shop.confirm", ["o-2"], entry.id) == \
        ("shop.confirm", ["o-2"], row[5])
    headers = dict(unpack_headers(row[4]))
    assert headers["ktasks-task"] == b"shop.confirm" and headers["trace"] == b"t1"


def test_countdown_row_goes_to_the_delay_tier_topic(offline_app: App, appdb: AppDb) -> None:
    conn = appdb.connect()
    entry = offline_app.outbox(conn).apply_async("shop.confirm", args=["o-3"], countdown_s=5)
    conn.commit()
    conn.close()
    assert entry.topic == offline_app.retry_topic("shop.tasks", offline_app.delay_tier_ms(5))


@pytest.mark.parametrize("call, error, text", [
    (lambda ob, t: ob.delay(t, {1, 2}), EncodeError, "positional argument 0"),
    (lambda ob, t: ob.delay(t, "x" * 10000), MessageTooLarge, "max_message_bytes"),
    (lambda ob, t: ob.apply_async(t, args="o-1"), EncodeError, "args must be a list or tuple"),
    (lambda ob, t: ob.apply_async(t, args=["o"], key=5), EncodeError, "key must be str or bytes"),
])
def test_delay_errors_are_raised_at_call_time_and_nothing_is_written(offline_app: App, appdb: AppDb, call: Any,
                                                                      error: type, text: str) -> None:
    conn = appdb.connect()
    task = offline_app.tasks["shop.confirm"]
    with pytest.raises(error, match=text):
        call(offline_app.outbox(conn), task)
    with pytest.raises(error, match=text):  # exactly what delay() raises, before it would reach Kafka
        call(type("Direct", (), {"delay": staticmethod(lambda t, *a: t.delay(*a)),
                                 "apply_async": staticmethod(lambda t, **kw: t.apply_async(**kw))}), task)
    conn.commit()
    conn.close()
    assert appdb.count() == 0


def test_autocommit_connection_outside_a_transaction_is_refused(offline_app: App, tmp_path: Any) -> None:
    conn = sqlite3.connect(tmp_path / "a.sqlite3", isolation_level=None)
    with pytest.raises(AppDatabaseError, match="autocommit"):
        offline_app.outbox(conn).delay("shop.confirm", "o-1")
    conn.close()


def test_psycopg_autocommit_is_refused_unless_a_transaction_block_is_open(offline_app: App, pg_dsn: str) -> None:
    import psycopg

    from ktasks.appdb import create_schema

    with psycopg.connect(pg_dsn) as setup:
        create_schema(setup)
    conn = psycopg.connect(pg_dsn, autocommit=True)
    with pytest.raises(AppDatabaseError, match="autocommit"):
        offline_app.outbox(conn).delay("shop.confirm", "o-1")
    with conn.transaction():
        offline_app.outbox(conn).delay("shop.confirm", "o-1")
    assert conn.execute("SELECT count(*) FROM ktasks_outbox").fetchone()[0] == 1
    conn.close()
