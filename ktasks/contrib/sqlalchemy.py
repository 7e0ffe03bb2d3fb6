"""SQLAlchemy: the outbox bound to a ``Session``, written in the session's transaction.

::

    from ktasks.contrib.sqlalchemy import outbox

    with Session(engine) as session, session.begin():
        session.add(Order(...))
        outbox(app, session).delay(send_confirmation, order_id)   # commits with the order, or not at all

``create_schema(engine)`` creates the tables (or copy their DDL into a
migration: :func:`ktasks.appdb.schema_statements`). Run a relay on the same
database: ``ktasks worker -A tasks --relay postgresql://...``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ..appdb.dialect import OUTBOX_TABLE, Dialect
from ..appdb.dialect import create_schema as _create_schema
from ..appdb.outbox import Outbox, pack_headers

if TYPE_CHECKING:
    from ..app import App, OutgoingRecord

logger = logging.getLogger(__name__)

__all__ = ["outbox", "SessionOutbox", "create_schema"]


def _dialect(bind: Any) -> Dialect:
    name = bind.dialect.name
    return Dialect(name if name in ("postgresql", "sqlite") else "generic")


class SessionOutbox(Outbox):
    """An outbox that writes through ``session.execute``, so the row joins the session's transaction."""

    def __init__(self, app: App, session: Any) -> None:
        super().__init__(app, session, dialect=_dialect(session.get_bind()), check=False)
        from sqlalchemy import text

        returning = " RETURNING id" if self.dialect.returning else ""
        self._statement = text(
            f"INSERT INTO {OUTBOX_TABLE} (topic, key, value, headers, task_id, created_at) "
            f"VALUES (:topic, :key, :value, :headers, :task_id, :created_at){returning}")

    def write(self, record: OutgoingRecord) -> int | None:
        result = self.conn.execute(self._statement, {
            "topic": record.topic, "key": record.key, "value": record.value,
            "headers": pack_headers(record.headers), "task_id": record.message.id,
            "created_at": record.message.created})
        if self.dialect.returning:
            return int(result.scalar_one())
        row_id = getattr(result, "lastrowid", None)
        return int(row_id) if isinstance(row_id, int) else None


def outbox(app: App, session: Any) -> SessionOutbox:
    """The outbox of ``session``'s database: ``.delay(task, ...)`` / ``.apply_async(task, ...)``."""
    return SessionOutbox(app, session)


def create_schema(engine: Any) -> None:
    """Create ``ktasks_outbox`` and ``ktasks_claims`` in ``engine``'s database if missing."""
    raw = engine.raw_connection()
    try:
        _create_schema(raw.dbapi_connection, _dialect(engine))
    finally:
        raw.close()
