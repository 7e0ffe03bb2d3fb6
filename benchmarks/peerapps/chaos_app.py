"""The app of ``benchmarks/chaos.py``: two tasks whose effects land in SQLite tables.

* ``chaos.plain(n, sleep_ms)``: sleeps, then INSERTs ``n`` into ``plain_effects``
  of a separate SQLite file (``CHAOS_EFFECTS_DB``), outside any ledger
  transaction: a rerun after a crash writes it again.
* ``chaos.tx(n)``: INSERTs ``n`` into ``tx_effects`` through ``ctx.ledger``, in the
  ledger transaction that also records its success: written exactly once.

No table has a unique key, so duplicates stay countable. Settings come from
``KTASKS_*`` variables set by the harness.
"""

from __future__ import annotations

import os
import sqlite3
import time
from typing import Any

from ktasks import App

app = App("chaos")

PLAIN_TABLE = "plain_effects"
TX_TABLE = "tx_effects"

_conn: sqlite3.Connection | None = None
_conn_pid: int | None = None


def effects_db() -> sqlite3.Connection:
    """This process's connection to the plain effects file (autocommit, WAL)."""
    global _conn, _conn_pid
    if _conn is None or _conn_pid != os.getpid():
        _conn = sqlite3.connect(os.environ["CHAOS_EFFECTS_DB"], timeout=60, isolation_level=None)
        _conn.execute("PRAGMA busy_timeout = 60000")
        _conn_pid = os.getpid()
    return _conn


@app.task(name="chaos.plain")
def plain(n: int, sleep_ms: float) -> None:
    """A task with a side effect the ledger does not cover."""
    if sleep_ms:
        time.sleep(sleep_ms / 1000)
    effects_db().execute(f"INSERT INTO {PLAIN_TABLE} (n, pid, ts) VALUES (?, ?, ?)", (n, os.getpid(), time.time()))


@app.task(name="chaos.tx", bind=True, ledger_transaction=True)
def tx(ctx: Any, n: int) -> None:
    """A task whose write commits with its ledger success record (it holds the ledger lock: kept short)."""
    ctx.ledger.execute(f"CREATE TABLE IF NOT EXISTS {TX_TABLE} (n INTEGER, pid INTEGER, ts REAL)")
    ctx.ledger.execute(f"INSERT INTO {TX_TABLE} (n, pid, ts) VALUES (?, ?, ?)", (n, os.getpid(), time.time()))
