"""The relay's side of the outbox table: claim a batch, delete what Kafka acknowledged, wait for more.

One class per database, behind :func:`open_store`:

* PostgreSQL (``postgresql://...``, psycopg 3): rows are claimed with
  ``SELECT ... FOR UPDATE SKIP LOCKED`` inside a transaction that lasts until
  they are published and deleted, so several relays share the table without
  publishing a row twice. A relay waits with ``LISTEN`` on a second,
  autocommit connection; the table's trigger notifies at each commit.
* SQLite (``sqlite:///path``): the batch is claimed under ``BEGIN IMMEDIATE``
  (SQLite's single writer lock), so relays take turns; idle relays poll at a
  bounded rate.

Neither ever sees a row of a transaction still open: a plain ``SELECT``
reads committed rows only. Rows are deleted, never tracked with a "last
published id", because ids are not committed in order: a transaction that took
id 7 may commit after one that took id 8, and a high-water mark would skip 7.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any, Protocol

from ..errors import AppDatabaseError
from .dialect import NOTIFY_CHANNEL, OUTBOX_TABLE, Dialect, create_schema

logger = logging.getLogger(__name__)

__all__ = ["OutboxRow", "OutboxStore", "open_store", "redact_dsn"]

_COLUMNS = "id, topic, key, value, headers, created_at"


@dataclass(frozen=True)
class OutboxRow:
    id: int
    topic: str
    key: bytes | None
    value: bytes
    headers: bytes
    created_at: float


def _row(r: Any) -> OutboxRow:
    return OutboxRow(int(r[0]), str(r[1]), None if r[2] is None else bytes(r[2]), bytes(r[3]), bytes(r[4]),
                     float(r[5]))


class OutboxStore(Protocol):
    """What the relay needs from a database."""

    waits_for_notifications: bool

    def claim(self, limit: int) -> tuple[list[OutboxRow], int]:
        """Open a transaction and claim up to ``limit`` rows, oldest first.

        Returns the rows this relay may publish now and how many it held back
        (rows whose key has an older row it does not hold, so publishing them
        now would break the key's order).
        """

    def finish(self, published_ids: list[int]) -> None:
        """Delete the published rows and commit, releasing the claim on the others."""

    def release(self) -> None:
        """Roll back: release the claim, delete nothing."""

    def wait(self, timeout_s: float, stop: threading.Event) -> None:
        """Return when new rows may have committed, ``timeout_s`` passed, or ``stop`` is set."""

    def backlog(self) -> tuple[int, float | None]:
        """Rows waiting, and the creation time of the oldest."""

    def close(self) -> None: ...


class PostgresStore:
    """The outbox on PostgreSQL (psycopg 3)."""

    waits_for_notifications = True

    def __init__(self, dsn: str, create: bool = True) -> None:
        try:
            import psycopg
        except ImportError as exc:
            raise AppDatabaseError("the relay needs psycopg 3 for PostgreSQL: pip install 'ktasks[postgres]'") \
                from exc
        self.conn = psycopg.connect(dsn)
        if create:
            create_schema(self.conn, Dialect("postgresql"))
        self.listener = psycopg.connect(dsn, autocommit=True)
        self.listener.execute(f"LISTEN {NOTIFY_CHANNEL}")

    def claim(self, limit: int) -> tuple[list[OutboxRow], int]:
        rows = [_row(r) for r in self.conn.execute(
            f"SELECT {_COLUMNS} FROM {OUTBOX_TABLE} ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED", (limit,))]
        first: dict[bytes, int] = {}
        for row in rows:
            if row.key is not None:
                first.setdefault(row.key, row.id)
        if not first:
            return rows, 0
        # A key whose oldest committed row is not ours is being published by another relay (it holds
        # that row's lock until its rows are acknowledged and deleted): leave the key to it this round.
        oldest = self.conn.execute(
            f"SELECT key, min(id) FROM {OUTBOX_TABLE} WHERE key = ANY(%s) GROUP BY key", (list(first),))
        blocked = {bytes(k) for k, low in oldest if low < first[bytes(k)]}
        if not blocked:
            return rows, 0
        kept = [r for r in rows if r.key not in blocked]
        return kept, len(rows) - len(kept)

    def finish(self, published_ids: list[int]) -> None:
        if published_ids:
            self.conn.execute(f"DELETE FROM {OUTBOX_TABLE} WHERE id = ANY(%s)", (published_ids,))
        self.conn.commit()

    def release(self) -> None:
        self.conn.rollback()

    def wait(self, timeout_s: float, stop: threading.Event) -> None:
        # Notifications that arrived while the relay was busy are queued on the connection,
        # so a commit between the last claim and this call still wakes it at once. Waiting in
        # short slices lets a stop request end the wait without delaying any notification.
        deadline = time.monotonic() + timeout_s
        while not stop.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            for _ in self.listener.notifies(timeout=min(left, 0.5), stop_after=1):
                return

    def backlog(self) -> tuple[int, float | None]:
        row = self.conn.execute(f"SELECT count(*), min(created_at) FROM {OUTBOX_TABLE}").fetchone()
        self.conn.commit()
        assert row is not None
        count, oldest = row
        return int(count), oldest

    def close(self) -> None:
        self.listener.close()
        self.conn.close()


class SqliteStore:
    """The outbox in an SQLite file: one relay at a time holds the write lock for a batch."""

    waits_for_notifications = False

    def __init__(self, path: str, create: bool = True, busy_timeout_s: float = 30.0) -> None:
        self.conn = sqlite3.connect(path, timeout=busy_timeout_s, isolation_level=None, check_same_thread=False)
        if create:
            self.conn.execute("BEGIN")
            create_schema(_SqliteCommitting(self.conn), Dialect("sqlite", "qmark"))

    def claim(self, limit: int) -> tuple[list[OutboxRow], int]:
        # IMMEDIATE takes the write lock now: a second relay waits here instead of reading the same rows.
        self.conn.execute("BEGIN IMMEDIATE")
        rows = [_row(r) for r in self.conn.execute(
            f"SELECT {_COLUMNS} FROM {OUTBOX_TABLE} ORDER BY id LIMIT ?", (limit,))]
        return rows, 0

    def finish(self, published_ids: list[int]) -> None:
        for start in range(0, len(published_ids), 500):
            chunk = published_ids[start:start + 500]
            self.conn.execute(f"DELETE FROM {OUTBOX_TABLE} WHERE id IN ({','.join('?' * len(chunk))})", chunk)
        self.conn.execute("COMMIT")

    def release(self) -> None:
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")

    def wait(self, timeout_s: float, stop: threading.Event) -> None:
        stop.wait(timeout_s)

    def backlog(self) -> tuple[int, float | None]:
        count, oldest = self.conn.execute(f"SELECT count(*), min(created_at) FROM {OUTBOX_TABLE}").fetchone()
        return int(count), oldest

    def close(self) -> None:
        self.conn.close()


class _SqliteCommitting:
    """An autocommit sqlite3 connection seen through ``create_schema``'s ``cursor()``/``commit()``."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn

    def cursor(self) -> sqlite3.Cursor:
        return self._conn.cursor()

    def commit(self) -> None:
        self._conn.execute("COMMIT")


def open_store(dsn: str, create: bool = True) -> PostgresStore | SqliteStore:
    """A store for ``postgresql://...`` (or ``postgres://``, or libpq ``key=value`` strings) or ``sqlite:///path``."""
    if dsn.startswith(("postgresql:", "postgres:")) or re.match(r"^\s*\w+\s*=", dsn):
        return PostgresStore(dsn, create=create)
    if dsn.startswith("sqlite:///"):
        return SqliteStore(dsn[len("sqlite:///"):], create=create)
    if dsn.startswith("sqlite:"):
        raise AppDatabaseError(f"--dsn {dsn!r}: write SQLite paths as sqlite:///relative/path or "
                               "sqlite:////absolute/path")
    raise AppDatabaseError(f"--dsn {redact_dsn(dsn)!r}: the relay reads PostgreSQL (postgresql://...) or SQLite "
                           "(sqlite:///path) outboxes")


def redact_dsn(dsn: str) -> str:
    """The DSN without its password, for logs."""
    dsn = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", dsn)
    return re.sub(r"(password\s*=\s*)\S+", r"\1***", dsn)
