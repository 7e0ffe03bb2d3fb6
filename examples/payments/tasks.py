"""An idempotent payment flow: each order is charged once, however often its message arrives.

``charge`` is a bound task with ``ledger_transaction=True``: ``ctx.ledger`` is
the SQLite connection of the worker's idempotency ledger, inside an open
transaction. The task writes the payment row through it, and the worker
records the task's success in the same transaction, so the row and the
success commit together or not at all:

* the same order enqueued twice with the same ``idempotency_key`` (a client
  retrying, a double click) is charged once: the second message finds the
  success in the ledger and is skipped;
* a worker killed mid-task leaves neither the row nor the success, so the
  redelivered message charges it (once);
* a worker killed after the commit but before its offset was committed is
  skipped on redelivery: the row is there, and so is the success.

A real payment provider is outside that transaction: pass it the same
idempotency key (most providers accept one) so a retried call is not a
second charge.

Run it with ``bash examples/payments/run.sh`` (a broker must be running:
``ktasks dev up``).
"""

from __future__ import annotations

import time
from typing import Any

from ktasks import App, TaskContext

# bootstrap_servers defaults to 127.0.0.1:9092 (ktasks dev up); KTASKS_BOOTSTRAP_SERVERS overrides it.
app = App("payments", partitions=2)

SCHEMA = """
CREATE TABLE IF NOT EXISTS payments (
    order_id   TEXT PRIMARY KEY,
    cents      INTEGER NOT NULL,
    task_id    TEXT NOT NULL,
    charged_at REAL NOT NULL
)
"""


@app.task(bind=True, ledger_transaction=True, max_retries=3)
def charge(ctx: TaskContext, order_id: str, cents: int) -> dict[str, Any]:
    """Record the payment of ``order_id``; commits with the task's success record, or not at all."""
    db = ctx.ledger
    assert db is not None, "run with the ledger enabled"
    db.execute(SCHEMA)
    # The primary key is a second line of defence: a different idempotency key for the same
    # order fails here (and rolls back) instead of charging twice.
    db.execute("INSERT INTO payments (order_id, cents, task_id, charged_at) VALUES (?, ?, ?, ?)",
               (order_id, cents, ctx.id, time.time()))
    return {"order_id": order_id, "charged_cents": cents}


def enqueue_payment(order_id: str, cents: int) -> Any:
    """What the web app calls: the idempotency key is derived from the order, not from the request."""
    return charge.apply_async(args=(order_id, cents), key=order_id, idempotency_key=f"charge-{order_id}")
