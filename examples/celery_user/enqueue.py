"""Enqueue the shop's tasks the Celery way: apply_async with countdown= and expires=."""

import time

from proj.tasks import app, fetch_rate, send_receipt

for currency in ("USD", "GBP"):
    fetch_rate.apply_async(args=(currency,), countdown=1)          # in a second, like Celery
for order_id in (1, 2, 3):
    send_receipt.apply_async(args=(order_id, f"customer{order_id}@example.com"), expires=600,
                             idempotency_key=f"receipt-{order_id}")
# The same receipt again (a double click): the ledger runs it once.
send_receipt.apply_async(args=(1, "customer1@example.com"), expires=600, idempotency_key="receipt-1")
# A receipt that nobody picks up within half a second: the worker will not send it.
send_receipt.apply_async(args=(99, "late@example.com"), expires=0.5, idempotency_key="receipt-99")
app.flush()
time.sleep(1)  # let the last one expire before the worker starts
print("7 tasks enqueued")
