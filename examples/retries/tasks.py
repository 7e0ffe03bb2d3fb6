"""Retries and the dead-letter topic: three tasks, three outcomes.

* ``fetch_rate`` fails twice with a ``ConnectionError`` (a flaky upstream), then
  succeeds: each failure goes through a retry topic and waits its backoff.
* ``parse_invoice`` always fails: after ``max_retries`` retries it goes to the
  dead-letter topic with reason ``retries-exhausted``.
* ``charge_card`` retries only ``ConnectionError``; the ``ValueError`` it raises
  is not retriable, so it goes to the dead-letter topic at once
  (``not-retriable``).

Run it with ``bash examples/retries/run.sh`` (a broker must be running:
``ktasks dev up``).
"""

from __future__ import annotations

from ktasks import App, TaskContext

# bootstrap_servers defaults to 127.0.0.1:9092 (ktasks dev up); KTASKS_BOOTSTRAP_SERVERS overrides it.
app = App("retries", partitions=2)


@app.task(bind=True, max_retries=4, retry_backoff_s=0.5)
def fetch_rate(ctx: TaskContext, currency: str) -> float:
    """Fails on the first two attempts, as a flaky service would; backoff 0.5 s, then about 1 s."""
    if ctx.attempt < 2:
        raise ConnectionError(f"rates service timed out for {currency} (attempt {ctx.attempt})")
    return {"EUR": 1.0, "USD": 1.08, "GBP": 0.86}.get(currency, 1.0)


@app.task(max_retries=2, retry_backoff_s=0.2)
def parse_invoice(invoice_id: str) -> None:
    """Always fails: retried twice, then dead-lettered (reason ``retries-exhausted``)."""
    raise ValueError(f"invoice {invoice_id} is malformed: no total")


@app.task(max_retries=3, retry_for=(ConnectionError,))
def charge_card(card: str, cents: int) -> None:
    """Only ``ConnectionError`` is retried; this ``ValueError`` goes to the dead-letter topic at once."""
    raise ValueError(f"card {card} declined: {cents} cents over the limit")
