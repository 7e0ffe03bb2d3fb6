"""Claims: a task's exactly-once writes in the application's own database, on any host.

A bound task calls ``ctx.claim(conn)`` inside the transaction that makes its
writes. The claim inserts the task's idempotency key into ``ktasks_claims``
through the same connection, so the claim and the writes commit together or
not at all. A second execution of the same key (a redelivery after a crash
between that commit and the offset commit, on this host or another) finds the
key claimed: :class:`~ktasks.errors.AlreadyClaimed` is raised before it writes
anything, and the task is recorded as done instead of failed.

On PostgreSQL a second claim made while the first transaction is still open
waits for it (the primary key's index lock): it fails if the first commits and
goes through if the first rolls back.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..errors import AlreadyClaimed
from .dialect import CLAIMS_TABLE, Dialect, check_transaction, detect

logger = logging.getLogger(__name__)

__all__ = ["claim", "is_claimed"]


def claim(conn: Any, key: str, task: str, task_id: str, dialect: Dialect | None = None) -> None:
    """Insert ``key`` into ``ktasks_claims`` in ``conn``'s open transaction; raise ``AlreadyClaimed`` if it is there."""
    dialect = dialect or detect(conn)
    check_transaction(conn, "claim")
    params = (key, task, task_id, time.time())
    cur = conn.cursor()
    try:
        if dialect.name in ("postgresql", "sqlite"):
            # ON CONFLICT leaves the caller's transaction usable (a failed INSERT would abort it on PostgreSQL).
            cur.execute(dialect.sql(f"INSERT INTO {CLAIMS_TABLE} (key, task, task_id, claimed_at) "
                                    "VALUES (%s, %s, %s, %s) ON CONFLICT (key) DO NOTHING"), params)
            if cur.rowcount == 0:
                raise AlreadyClaimed(key)
            return
        try:
            cur.execute(dialect.sql(f"INSERT INTO {CLAIMS_TABLE} (key, task, task_id, claimed_at) "
                                    "VALUES (%s, %s, %s, %s)"), params)
        except Exception as exc:
            if type(exc).__name__ == "IntegrityError":  # DB-API's name for a unique violation
                raise AlreadyClaimed(key) from exc
            raise
    finally:
        cur.close()


def is_claimed(conn: Any, key: str, dialect: Dialect | None = None) -> bool:
    """Whether ``key`` was claimed (in what ``conn`` can see)."""
    dialect = dialect or detect(conn)
    cur = conn.cursor()
    try:
        cur.execute(dialect.sql(f"SELECT 1 FROM {CLAIMS_TABLE} WHERE key = %s"), (key,))
        return cur.fetchone() is not None
    finally:
        cur.close()
