"""The ledger file's schema: its table, versions and migrations, transactions and SQLite errors.

:class:`ktasks.ledger.Ledger` keeps the worker's protocol; this module keeps
what is about the file itself: the version in ``PRAGMA user_version``, the
migrations that bring an older file to it (each in the write transaction
that bumps the version), the ``BEGIN IMMEDIATE`` write transaction every
ledger write uses, and how SQLite errors become
:class:`~ktasks.errors.LedgerError`. See docs/ledger.md, "Schema".
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlite_utils

from .errors import LedgerError

logger = logging.getLogger(__name__)

__all__ = ["SCHEMA_VERSION", "TABLE", "APPLICATION_ID", "COLUMNS", "BEGIN_IMMEDIATE", "BEGIN_DEFERRED",
           "COMMIT", "ROLLBACK", "immediate", "is_busy", "ledger_error", "migrate"]

#: Version of the schema this code writes; stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 3
#: Our table. Prefixed, because bound tasks keep their own tables in the same file.
TABLE = "ktasks_ledger"
#: ``PRAGMA application_id`` of a ledger file ("ktlg"), so tools can tell one from any other SQLite file.
APPLICATION_ID = 0x6B746C67

#: The table's columns, in :class:`ktasks.ledger.Entry`'s field order.
COLUMNS = (
    "key", "task", "state", "attempt", "starts", "total_starts", "host", "pid", "started_at",
    "finished_at", "duration_s", "result", "note", "exc_type", "exc_message", "traceback", "updated_at",
    "pid_start",
)

# Our own transaction statements carry a comment so their text differs from a task's
# "COMMIT": the statement cache is keyed by text, and a cached statement is not shown
# to the authorizer again (see Ledger._authorize in ktasks.ledger).
BEGIN_IMMEDIATE = "BEGIN IMMEDIATE /* ktasks */"
BEGIN_DEFERRED = "BEGIN DEFERRED /* ktasks */"
COMMIT = "COMMIT /* ktasks */"
ROLLBACK = "ROLLBACK /* ktasks */"


@contextlib.contextmanager
def immediate(conn: sqlite3.Connection) -> Iterator[None]:
    """A write transaction (``BEGIN IMMEDIATE``) around the block: committed, or rolled back on any exception."""
    conn.execute(BEGIN_IMMEDIATE)
    try:
        yield
        conn.execute(COMMIT)
    except BaseException:
        if conn.in_transaction:
            conn.execute(ROLLBACK)
        raise


def is_busy(exc: BaseException) -> bool:
    """Whether a SQLite error is a lock timeout (busy or locked), which may clear on its own."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    code = getattr(exc, "sqlite_errorcode", None)  # Python 3.11+
    if code is not None:
        return (code & 0xFF) in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED (named in sqlite3 only from 3.11)
    msg = str(exc)
    return "locked" in msg or "busy" in msg


def ledger_error(what: str, exc: BaseException) -> LedgerError:
    """A :class:`LedgerError` for a SQLite error while doing ``what``; retriable when it is a lock timeout."""
    err = LedgerError(f"ledger: {what}: {exc}")
    # Lock timeouts may clear on their own; a corrupt or unwritable file will not.
    err.retriable = is_busy(exc)
    return err


def _migrate_1(db: sqlite_utils.Database) -> None:
    db.create_table(
        TABLE,
        {
            "key": str, "task": str, "state": str, "attempt": int, "starts": int, "total_starts": int,
            "host": str, "pid": int, "started_at": float, "finished_at": float, "duration_s": float,
            "result": bytes, "note": str, "exc_type": str, "exc_message": str, "traceback": str,
            "updated_at": float,
        },
        pk="key",
        not_null={"task", "state", "attempt", "starts", "total_starts", "updated_at"},
        defaults={"task": "", "attempt": 0, "starts": 0, "total_starts": 0},
    )
    # Prune and "oldest finished" walk this index instead of scanning the table.
    db.table(TABLE).create_index(["finished_at"], index_name=f"{TABLE}_finished_at")


#: The columns of schema versions 1 and 2, spelled out: a migration must not change with later versions.
_COLUMNS_V1 = (
    "key", "task", "state", "attempt", "starts", "total_starts", "host", "pid", "started_at",
    "finished_at", "duration_s", "result", "note", "exc_type", "exc_message", "traceback", "updated_at",
)


def _migrate_2(db: sqlite_utils.Database) -> None:
    # Version 1 keyed an entry by the idempotency key alone, so two tasks given the same key
    # shared one entry and the second was skipped as "already succeeded". From version 2 an
    # entry is one task's execution: the primary key is (key, task), key first so that tools
    # looking a key up without its task still search the index. SQLite cannot change a primary
    # key in place: build the new table, copy every row (no two collide, keys were unique),
    # and swap it in. A version-1 row without a task (a finish recorded without a start) keeps
    # the empty task name.
    conn = db.conn
    old = f"{TABLE}_v1"
    conn.execute(f"DROP INDEX IF EXISTS {TABLE}_finished_at")
    conn.execute(f"ALTER TABLE {TABLE} RENAME TO {old}")
    conn.execute(
        f"CREATE TABLE {TABLE} ("
        "key TEXT NOT NULL, task TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, "
        "attempt INTEGER NOT NULL DEFAULT 0, starts INTEGER NOT NULL DEFAULT 0, "
        "total_starts INTEGER NOT NULL DEFAULT 0, host TEXT, pid INTEGER, started_at FLOAT, "
        "finished_at FLOAT, duration_s FLOAT, result BLOB, note TEXT, exc_type TEXT, exc_message TEXT, "
        "traceback TEXT, updated_at FLOAT NOT NULL, PRIMARY KEY (key, task))"
    )
    columns = ", ".join(_COLUMNS_V1)
    conn.execute(f"INSERT INTO {TABLE} ({columns}) SELECT {columns} FROM {old}")
    conn.execute(f"DROP TABLE {old}")
    # Prune and "oldest finished" walk this index instead of scanning the table.
    conn.execute(f"CREATE INDEX {TABLE}_finished_at ON {TABLE} (finished_at)")


def _migrate_3(db: sqlite_utils.Database) -> None:
    # The start time of the process that recorded a start, next to its pid: whether that
    # process still runs decides between "running, wait" and "crashed, count it", and a
    # pid alone may have been reused. NULL for starts recorded before: pid liveness only.
    db.conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN pid_start INTEGER")


#: Migration to version N is ``_MIGRATIONS[N]``; each runs in the transaction that bumps the version.
_MIGRATIONS: dict[int, Callable[[sqlite_utils.Database], None]] = {1: _migrate_1, 2: _migrate_2, 3: _migrate_3}


def migrate(conn: sqlite3.Connection, path: Path) -> None:
    try:
        if conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION:
            return  # the common case: no write lock needed
        # IMMEDIATE: processes opening a new file at once queue here, and each
        # re-reads the version under the lock, so exactly one creates the schema.
        with immediate(conn):
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise LedgerError(f"ledger: {path} has schema version {version}; this ktasks "
                                  f"understands up to {SCHEMA_VERSION} (upgrade ktasks)")
            if version == 0:
                app_id = conn.execute("PRAGMA application_id").fetchone()[0]
                tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
                if app_id not in (0, APPLICATION_ID) or TABLE in tables:
                    raise LedgerError(f"ledger: {path} is not a ktasks ledger")
            db = sqlite_utils.Database(conn, recursive_triggers=False, execute_plugins=False)
            for v in range(version + 1, SCHEMA_VERSION + 1):
                _MIGRATIONS[v](db)
                logger.info("ledger: %s migrated to schema version %d", path, v)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    except sqlite3.Error as exc:
        raise ledger_error(f"cannot create the schema in {path}", exc) from exc
