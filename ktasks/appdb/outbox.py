"""The transactional outbox: enqueue a task in the same transaction as the application's own writes.

``app.outbox(conn).delay(task, ...)`` encodes and checks the call exactly as
``task.delay(...)`` would, then inserts the record into the ``ktasks_outbox``
table through ``conn``, inside the transaction the caller has open. Nothing is
committed here: the row becomes visible when the caller commits, and vanishes
if it rolls back. A relay (:mod:`ktasks.relay`, ``ktasks relay``) publishes
committed rows to Kafka afterwards.

Each row carries a task id fixed at write time. The relay may publish a row
again after a crash (published, not yet deleted); the copy has the same task
id, hence the same ledger key, and the worker skips it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..message import pack, unpack
from .dialect import OUTBOX_TABLE, Dialect, check_transaction, detect

if TYPE_CHECKING:
    from ..app import App, OutgoingRecord
    from ..task import EagerResult, Task

logger = logging.getLogger(__name__)

__all__ = ["Outbox", "OutboxEntry", "pack_headers", "unpack_headers"]


@dataclass(frozen=True)
class OutboxEntry:
    """What ``outbox.delay()`` returns: the task id, its topic, and the outbox row id when the driver tells it."""

    id: str
    topic: str
    row_id: int | None


def pack_headers(headers: Sequence[tuple[str, bytes]]) -> bytes:
    return pack([[k, v] for k, v in headers])


def unpack_headers(data: bytes) -> list[tuple[str, bytes]]:
    return [(str(k), bytes(v)) for k, v in unpack(bytes(data))]


class Outbox:
    """Enqueue through the application's database connection, atomically with its transaction.

    ``conn`` is any DB-API 2.0 connection (``sqlite3``, ``psycopg``,
    ``psycopg2``, ...) with a transaction open or about to open; in autocommit
    mode outside a transaction the call is refused, since the row would commit
    on its own. ``dialect`` is detected from the driver unless given. Django
    and SQLAlchemy users take the helpers in :mod:`ktasks.contrib`.
    """

    def __init__(self, app: App, conn: Any, *, dialect: Dialect | None = None, check: bool = True) -> None:
        self.app = app
        self.conn = conn
        self.dialect = dialect or detect(conn)
        self._check = check
        returning = " RETURNING id" if self.dialect.returning else ""
        self._insert = self.dialect.sql(
            f"INSERT INTO {OUTBOX_TABLE} (topic, key, value, headers, task_id, created_at) "
            f"VALUES (%s, %s, %s, %s, %s, %s){returning}")

    def delay(self, task: Task[..., Any] | str, *args: Any, **kwargs: Any) -> OutboxEntry | EagerResult:
        """Like ``task.delay(*args, **kwargs)``, through the outbox."""
        return self.apply_async(task, args=args, kwargs=kwargs)

    def apply_async(
        self,
        task: Task[..., Any] | str,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        key: str | bytes | None = None,
        task_id: str | None = None,
        idempotency_key: str | None = None,
        headers: Mapping[str, str | bytes] | None = None,
        topic: str | None = None,
        countdown_s: float | None = None,
        eta: Any = None,
        expires: Any = None,
        **options: Any,
    ) -> OutboxEntry | EagerResult:
        """Like ``task.apply_async(...)``: the same options, checks and errors, through the outbox.

        ``countdown_s``/``eta`` and ``expires`` count from this call, not from the publish.

        In eager mode the task runs at once, as ``delay()`` does, whatever
        becomes of the transaction.
        """
        name = task if isinstance(task, str) else task.name
        if topic is None and not isinstance(task, str):
            topic = task.topic
        record = self.app.build_record(name, args, kwargs, key=key, task_id=task_id,
                                       idempotency_key=idempotency_key, headers=headers, topic=topic,
                                       countdown_s=countdown_s, eta=eta, expires=expires, **options)
        if self.app.settings.eager:
            from ..message import decode

            return self.app._run_eager(decode(record.value), record.task_topic)
        row_id = self.write(record)
        self.app.middleware.after("after_enqueue", record.message, record.topic)
        return OutboxEntry(record.message.id, record.topic, row_id)

    def write(self, record: OutgoingRecord) -> int | None:
        """Insert one encoded record into the outbox table; returns the row id if the driver gives it."""
        if self._check:
            check_transaction(self.conn, "outbox")
        cur = self.conn.cursor()
        try:
            cur.execute(self._insert, (record.topic, record.key, record.value, pack_headers(record.headers),
                                       record.message.id, record.message.created))
            if self.dialect.returning:
                row = cur.fetchone()
                return int(row[0]) if row else None
            row_id = getattr(cur, "lastrowid", None)
            return int(row_id) if isinstance(row_id, int) else None
        finally:
            cur.close()
