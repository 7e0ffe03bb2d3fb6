"""A shop's background tasks, written from docs/celery.md by someone who knows Celery."""

import json
import os
import time

from ktasks import App

# Like Celery("shop", broker=...): the broker comes from KTASKS_BOOTSTRAP_SERVERS.
app = App("shop")

EMAIL_QUEUE = os.environ.get("SHOP_EMAIL_QUEUE", "shop.emails")
OUTBOX = os.environ.get("SHOP_OUTBOX", "outbox.jsonl")


def record(kind, **fields):
    """Stands in for the outside world (a rates API, an SMTP server): one JSON line per call."""
    fields.update(kind=kind, at=time.time())
    with open(OUTBOX, "a") as f:
        f.write(json.dumps(fields) + "\n")


class RateServiceDown(ConnectionError):
    pass


# The rates service fails on the first two calls for a currency (simulated with a counter file).
def _calls(currency):
    path = f"{OUTBOX}.{currency}.calls"
    n = int(open(path).read()) if os.path.exists(path) else 0
    with open(path, "w") as f:
        f.write(str(n + 1))
    return n


@app.task(bind=True, autoretry_for=(ConnectionError,), max_retries=3, retry_backoff=0.2, retry_jitter=False)
def fetch_rate(self, currency):
    if _calls(currency) < 2:
        raise RateServiceDown(f"rates service down (attempt {self.attempt})")
    record("rate", currency=currency, attempt=self.attempt)
    return 1.08


@app.task(queue=EMAIL_QUEUE, max_retries=0, ignore_result=True)
def send_receipt(order_id, to):
    # An email must not go out twice: no retries, and callers pass idempotency_key=.
    record("email", order_id=order_id, to=to)
