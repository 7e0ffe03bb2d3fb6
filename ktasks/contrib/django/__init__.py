"""Django: the outbox bound to Django's connection and transaction, and ``task.delay_on_commit()``.

Add ``"ktasks.contrib.django"`` to ``INSTALLED_APPS`` and run ``manage.py
migrate``: its migration creates ``ktasks_outbox`` and ``ktasks_claims``. Then,
in a view::

    from django.db import transaction
    from ktasks.contrib.django import outbox

    with transaction.atomic():
        order = Order.objects.create(...)
        outbox(app).delay(send_confirmation, order.pk)   # committed with the order, or not at all

and run ``ktasks worker -A tasks --relay postgresql://...`` (or ``ktasks relay``).

``task.delay_on_commit(...)`` is Celery's answer: it sends straight to Kafka
right after the commit (nothing if it rolls back), so a crash between the
commit and the send loses the task. See docs/outbox.md for which to use.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from ...appdb.dialect import Dialect
from ...appdb.outbox import Outbox
from ...errors import AppDatabaseError

if TYPE_CHECKING:
    from ...app import App, OutgoingRecord
    from ...task import Task

logger = logging.getLogger(__name__)

__all__ = ["outbox", "delay_on_commit", "apply_on_commit", "DjangoOutbox"]



class DjangoOutbox(Outbox):
    """An outbox writing through ``django.db.connections[using]``, inside ``transaction.atomic()``."""

    def __init__(self, app: App, using: str = "default") -> None:
        from django.db import connections

        conn = connections[using]
        vendor = conn.vendor if conn.vendor in ("postgresql", "sqlite") else "generic"
        # Django's cursors take %s placeholders whatever the database.
        super().__init__(app, conn, dialect=Dialect(vendor, "format"), check=False)
        self.using = using

    def write(self, record: OutgoingRecord) -> int | None:
        if self.conn.get_autocommit() and not self.conn.in_atomic_block:
            raise AppDatabaseError("ktasks.contrib.django.outbox: call it inside transaction.atomic() (or with "
                                   "ATOMIC_REQUESTS); in autocommit mode the row would commit on its own")
        return super().write(record)


def outbox(app: App, using: str = "default") -> DjangoOutbox:
    """The outbox of Django's database ``using``; ``.delay(task, ...)`` / ``.apply_async(task, ...)``."""
    return DjangoOutbox(app, using)


def delay_on_commit(task: Task[..., Any], *args: Any, **kwargs: Any) -> None:
    """Send ``task.delay(*args, **kwargs)`` once the transaction of Django's default database commits.

    Nothing is sent if it rolls back; outside a transaction (autocommit) it is
    sent at once. The send happens after the commit, outside it: a crash in
    between loses the task. Use :func:`outbox` when that matters.
    """
    apply_on_commit(task, args, kwargs)


def apply_on_commit(task: Task[..., Any], args: Any = (), kwargs: Any = None, *, using: str = "default",
                    **options: Any) -> None:
    """``task.apply_async(args, kwargs, **options)`` once the transaction of database ``using`` commits."""
    from django.db import transaction

    transaction.on_commit(lambda: task.apply_async(args, kwargs, **options), using=using)
