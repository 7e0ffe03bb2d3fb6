"""The ktasks side of the workflows example: price each item in parallel, then add the prices up.

Settings come from ``KTASKS_*`` environment variables (``KTASKS_BOOTSTRAP_SERVERS``, ...).
Run a worker from this directory with ``ktasks worker -A tasks``.
"""

from __future__ import annotations

import os
from decimal import Decimal

from ktasks import App

app = App(os.environ.get("WORKFLOWS_APP", "workflows"))

PRICES = {"apple": Decimal("0.50"), "pear": Decimal("0.80"), "melon": Decimal("3.20")}


@app.task(name="workflows.price", max_retries=0)
def price(sku: str, qty: int) -> Decimal:
    """One chord member: the price of ``qty`` of ``sku`` (an unknown sku fails the whole quote)."""
    if sku not in PRICES:
        raise KeyError(f"no price for {sku!r}")
    return PRICES[sku] * qty


@app.task(name="workflows.quote_total", store_result=True)
def quote_total(prices: list[Decimal]) -> dict[str, object]:
    """The chord's callback: runs once, with every member's price in order."""
    return {"lines": len(prices), "total": sum(prices, Decimal("0"))}
