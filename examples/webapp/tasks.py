"""The ktasks side of the web example: the App and one task.

Settings come from ``KTASKS_*`` environment variables (``KTASKS_BOOTSTRAP_SERVERS``,
``KTASKS_DEFAULT_TOPIC``, ...), so the same code runs against any cluster.
Run a worker for it from this directory with ``ktasks worker -A tasks``.
"""

from __future__ import annotations

import logging
from decimal import Decimal

from ktasks import App

logger = logging.getLogger(__name__)

app = App("webapp")


@app.task(name="webapp.process_order", max_retries=5)
def process_order(order_id: str, items: list[dict[str, object]], total: Decimal) -> str:
    """Pretend to process an order: runs in a ktasks worker, not in the web process."""
    logger.info("processing order %s: %d items, total %s", order_id, len(items), total)
    return order_id
