"""The application's own database: the transactional outbox and the claims table.

* :mod:`ktasks.appdb.dialect`: drivers, placeholders, transaction checks, the tables' DDL.
* :mod:`ktasks.appdb.outbox`: ``app.outbox(conn)``, enqueueing inside the caller's transaction.
* :mod:`ktasks.appdb.store`: the relay's side of the outbox table (PostgreSQL, SQLite).
* :mod:`ktasks.appdb.claims`: ``ctx.claim(conn)``, a task's exactly-once writes in that database.
"""

from __future__ import annotations

from .dialect import CLAIMS_TABLE, OUTBOX_TABLE, Dialect, create_schema, detect, schema_statements
from .outbox import Outbox, OutboxEntry

__all__ = ["Outbox", "OutboxEntry", "Dialect", "detect", "create_schema", "schema_statements", "OUTBOX_TABLE",
           "CLAIMS_TABLE"]
