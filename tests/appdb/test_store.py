"""The relay's claims on the outbox table: committed rows only, each claimed by one relay, keys kept in order.

Broker-free, on the real PostgreSQL (and SQLite where it applies).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest

from ktasks import App
from ktasks.appdb.store import open_store, redact_dsn
from ktasks.errors import AppDatabaseError
from tests.fixtures.appdb import AppDb


@pytest.fixture
def offline_app(closed_port: int) -> App:
    app = App("shop", bootstrap_servers=f"127.0.0.1:{closed_port}")

    @app.task(name="shop.confirm")
    def confirm(n: int) -> None: ...

    return app


def _write(app: App, db: AppDb, *keys: str | None) -> list[int]:
    conn = db.connect()
    ids = [app.outbox(conn).apply_async("shop.confirm", args=[i], key=k).row_id for i, k in enumerate(keys)]
    conn.commit()
    conn.close()
    return ids  # type: ignore[return-value]


def test_a_row_of_an_open_transaction_is_never_claimed_even_below_a_committed_id(offline_app: App,
                                                                               pg_dsn: str) -> None:
    # PostgreSQL only: SQLite has one writer, so a lower id cannot commit after a higher one there.
    import psycopg

    from ktasks.appdb import create_schema

    appdb = AppDb("postgresql", pg_dsn, lambda: psycopg.connect(pg_dsn))
    with psycopg.connect(pg_dsn) as conn:
        create_schema(conn)
    early = appdb.connect()
    [low] = [offline_app.outbox(early).delay("shop.confirm", 1).row_id]  # type: ignore[union-attr]
    [high] = _write(offline_app, appdb, None)
    assert low < high
    store = open_store(appdb.dsn)
    rows, _ = store.claim(10)
    assert [r.id for r in rows] == [high]  # the open transaction's row is invisible
    store.finish([high])
    early.commit()  # committed after a higher id was published: a high-water mark would skip it
    rows, _ = store.claim(10)
    assert [r.id for r in rows] == [low]
    store.finish([low])
    store.close()
    early.close()


def test_two_relays_claim_disjoint_rows_and_hold_back_a_key_the_other_holds(offline_app: App,
                                                                         pg_dsn: str) -> None:
    import psycopg

    db = AppDb("postgresql", pg_dsn, lambda: psycopg.connect(pg_dsn))
    first, second = open_store(pg_dsn), open_store(pg_dsn)
    ids = _write(offline_app, db, "a", "a", None, "b", "a", None)
    rows_a, held_a = first.claim(2)  # the two oldest "a" rows
    rows_b, held_b = second.claim(10)  # skips the locked ones; must not publish "a" ahead of them
    assert [r.id for r in rows_a] == ids[:2] and held_a == 0
    assert [r.id for r in rows_b] == [ids[2], ids[3], ids[5]] and held_b == 1
    first.finish([r.id for r in rows_a])
    second.finish([r.id for r in rows_b])
    rows, held = second.claim(10)  # now the "a" row is the oldest of its key
    assert [r.id for r in rows] == [ids[4]] and held == 0
    second.finish([ids[4]])
    assert db.count() == 0
    first.close()
    second.close()


def test_postgres_wait_wakes_on_the_commit_of_an_outbox_write(offline_app: App, pg_dsn: str) -> None:
    import psycopg

    db = AppDb("postgresql", pg_dsn, lambda: psycopg.connect(pg_dsn))
    store = open_store(pg_dsn)
    woke = threading.Event()

    def waiter() -> None:
        store.wait(60, threading.Event())
        woke.set()

    t = threading.Thread(target=waiter)
    t.start()
    conn = db.connect()
    offline_app.outbox(conn).delay("shop.confirm", 1)
    assert not woke.wait(0.3)  # written, not committed: no notification yet
    conn.commit()
    assert woke.wait(30)
    t.join()
    conn.close()
    store.close()


@pytest.mark.parametrize("dsn, text", [("mysql://x", "PostgreSQL"), ("sqlite:/x.db", "sqlite:///")])
def test_unsupported_dsn_is_a_clear_error(dsn: str, text: str) -> None:
    with pytest.raises(AppDatabaseError, match=text):
        open_store(dsn)


def test_redact_dsn_hides_passwords(tmp_path: Any) -> None:
    assert redact_dsn("postgresql://app:s3cret@db/x") == "postgresql://app:***@db/x"
    assert redact_dsn("host=db password=s3cret dbname=x") == "host=db password=*** dbname=x"


def test_rows_kafka_does_not_acknowledge_stay_in_the_outbox(closed_port: int, tmp_path: Any,
                                                            caplog: pytest.LogCaptureFixture) -> None:
    import sqlite3

    from ktasks.relay import Relay

    app = App("shop", bootstrap_servers=f"127.0.0.1:{closed_port}", send_timeout_ms=300,
              auto_create_topics=False)

    @app.task(name="shop.confirm")
    def confirm(n: int) -> None: ...

    path = tmp_path / "app.sqlite3"
    db = AppDb("sqlite", f"sqlite:///{path}", lambda: sqlite3.connect(path))
    relay = Relay(app, db.dsn)  # creates the table
    _write(app, db, "a", "a", None)
    published, left = relay.relay_batch()
    relay.close()
    assert (published, left) == (0, 3) and db.count() == 3  # nothing deleted that Kafka did not take
    assert "was not published" in caplog.text and "stays in the outbox" in caplog.text
    app.close(timeout_s=1)
