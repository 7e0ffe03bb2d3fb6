"""Talking to the application's own database through any DB-API 2.0 connection.

The outbox (:mod:`ktasks.appdb.outbox`) and the claims table
(:mod:`ktasks.appdb.claims`) write into the caller's connection, inside the
caller's open transaction. They need three things from the driver: its
placeholder style, whether the connection is inside (or will open) a
transaction, and the DDL of the two tables for that database. This module
holds those, for SQLite (``sqlite3``), PostgreSQL (``psycopg`` 3 and
``psycopg2``) and, for writes only, any other driver with a standard
``paramstyle``.
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from typing import Any

from ..errors import AppDatabaseError

logger = logging.getLogger(__name__)

__all__ = ["Dialect", "detect", "schema_statements", "create_schema", "OUTBOX_TABLE", "CLAIMS_TABLE",
           "NOTIFY_CHANNEL"]

OUTBOX_TABLE = "ktasks_outbox"
CLAIMS_TABLE = "ktasks_claims"
#: The PostgreSQL channel a trigger notifies at the commit of a transaction that wrote outbox rows.
NOTIFY_CHANNEL = "ktasks_outbox"

_POSTGRES_DRIVERS = ("psycopg", "psycopg2")


@dataclass(frozen=True)
class Dialect:
    """A database family (``postgresql``, ``sqlite`` or ``generic``) and its driver's placeholder style."""

    name: str
    paramstyle: str = "format"

    def sql(self, text: str) -> str:
        """``text`` written with ``%s`` placeholders, in this driver's style."""
        if self.paramstyle in ("format", "pyformat"):
            return text
        if self.paramstyle == "qmark":
            return text.replace("%s", "?")
        if self.paramstyle == "numeric":
            parts = text.split("%s")
            return "".join(p + (f":{i + 1}" if i < len(parts) - 1 else "") for i, p in enumerate(parts))
        raise AppDatabaseError(f"DB-API paramstyle {self.paramstyle!r} is not supported "
                               "(qmark, numeric, format and pyformat are)")

    @property
    def returning(self) -> bool:
        """Whether ``INSERT ... RETURNING id`` gives the new row's id."""
        return self.name == "postgresql"


def _driver_module(conn: Any) -> str:
    return type(conn).__module__.split(".")[0]


def detect(conn: Any) -> Dialect:
    """The dialect of a DB-API connection, from the module that defines its class."""
    module = _driver_module(conn)
    if module == "sqlite3":
        return Dialect("sqlite", "qmark")
    if module in _POSTGRES_DRIVERS:
        return Dialect("postgresql", "format")
    if module == "django":
        raise AppDatabaseError("a Django connection: use ktasks.contrib.django.outbox(app) instead")
    if module == "sqlalchemy":
        raise AppDatabaseError("an SQLAlchemy connection or session: use ktasks.contrib.sqlalchemy.outbox(app, "
                               "session) instead")
    paramstyle = getattr(sys.modules.get(module), "paramstyle", None)
    if not isinstance(paramstyle, str):
        raise AppDatabaseError(f"cannot tell the placeholder style of a {type(conn).__module__}."
                               f"{type(conn).__name__} connection: pass dialect=Dialect(name, paramstyle)")
    return Dialect("generic", paramstyle)


def check_transaction(conn: Any, what: str) -> None:
    """Refuse a connection in autocommit mode outside a transaction: the write would commit alone.

    The whole point of writing into the caller's connection is that the row
    commits or rolls back with the caller's own writes.
    """
    module = _driver_module(conn)
    if module == "sqlite3":
        if conn.isolation_level is None and not conn.in_transaction:
            raise AppDatabaseError(f"{what}: the sqlite3 connection is in autocommit mode (isolation_level=None) "
                                   "and no transaction is open; run BEGIN first")
        return
    if module == "psycopg":
        from psycopg.pq import TransactionStatus

        if conn.autocommit and conn.info.transaction_status != TransactionStatus.INTRANS:
            raise AppDatabaseError(f"{what}: the psycopg connection is in autocommit mode and no transaction is "
                                   "open; use `with conn.transaction():`")
        return
    autocommit = getattr(conn, "autocommit", False)
    if autocommit is True:
        raise AppDatabaseError(f"{what}: the connection is in autocommit mode; open a transaction first")


def schema_statements(dialect: Dialect) -> list[str]:
    """``CREATE`` statements for the outbox and claims tables (idempotent)."""
    if dialect.name == "postgresql":
        return [
            f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
                id BIGSERIAL PRIMARY KEY,
                topic TEXT NOT NULL,
                key BYTEA,
                value BYTEA NOT NULL,
                headers BYTEA NOT NULL,
                task_id TEXT NOT NULL,
                created_at DOUBLE PRECISION NOT NULL)""",
            # The relay's "is this the oldest row of its key?" check.
            f"CREATE INDEX IF NOT EXISTS {OUTBOX_TABLE}_key_id ON {OUTBOX_TABLE} (key, id)",
            # A notification is delivered only when the writing transaction commits, and one per
            # transaction (PostgreSQL folds identical notifications): the relay wakes at once.
            f"""CREATE OR REPLACE FUNCTION {OUTBOX_TABLE}_notify() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN PERFORM pg_notify('{NOTIFY_CHANNEL}', ''); RETURN NULL; END $$""",
            f"""CREATE OR REPLACE TRIGGER {OUTBOX_TABLE}_notify AFTER INSERT ON {OUTBOX_TABLE}
                FOR EACH STATEMENT EXECUTE FUNCTION {OUTBOX_TABLE}_notify()""",
            f"""CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} (
                key TEXT PRIMARY KEY,
                task TEXT NOT NULL,
                task_id TEXT NOT NULL,
                claimed_at DOUBLE PRECISION NOT NULL)""",
        ]
    if dialect.name == "sqlite":
        return [
            # AUTOINCREMENT: ids never come back after the relay deletes the newest rows.
            f"""CREATE TABLE IF NOT EXISTS {OUTBOX_TABLE} (
                id INTEGER PRIMARY KEY AUTOINCREMENT,
                topic TEXT NOT NULL,
                key BLOB,
                value BLOB NOT NULL,
                headers BLOB NOT NULL,
                task_id TEXT NOT NULL,
                created_at REAL NOT NULL)""",
            f"CREATE INDEX IF NOT EXISTS {OUTBOX_TABLE}_key_id ON {OUTBOX_TABLE} (key, id)",
            f"""CREATE TABLE IF NOT EXISTS {CLAIMS_TABLE} (
                key TEXT PRIMARY KEY,
                task TEXT NOT NULL,
                task_id TEXT NOT NULL,
                claimed_at REAL NOT NULL)""",
        ]
    raise AppDatabaseError(f"no built-in schema for a {dialect.name!r} database: create {OUTBOX_TABLE} and "
                           f"{CLAIMS_TABLE} yourself (see docs/outbox.md)")


def create_schema(conn: Any, dialect: Dialect | None = None) -> None:
    """Create the outbox and claims tables if missing, and commit. Safe to run at every start."""
    dialect = dialect or detect(conn)
    cur = conn.cursor()
    try:
        if dialect.name == "postgresql":
            # DDL on a table locks out its writers, and waits for their open transactions: once the
            # schema is there (the usual case at a relay's start), touch nothing.
            cur.execute(f"SELECT to_regclass('{OUTBOX_TABLE}') IS NOT NULL AND to_regclass('{CLAIMS_TABLE}') IS NOT "
                        f"NULL AND EXISTS (SELECT 1 FROM pg_trigger WHERE tgname = '{OUTBOX_TABLE}_notify')")
            row = cur.fetchone()
            if row and row[0]:
                conn.rollback()
                return
            # Two processes creating the schema at once would race on the catalog: serialize them.
            cur.execute("SELECT pg_advisory_xact_lock(7032867150851225)")
        for statement in schema_statements(dialect):
            cur.execute(statement)
    finally:
        cur.close()
    conn.commit()
