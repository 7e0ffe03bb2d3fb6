"""Enqueue five payments, each twice (a client that retried), and wait until Kafka has them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tasks import app, enqueue_payment  # noqa: E402

ORDERS = {"order-1": 1999, "order-2": 4500, "order-3": 120, "order-4": 99900, "order-5": 2500}


def main() -> None:
    handles = []
    for _ in range(2):                      # every order is sent twice
        for order_id, cents in ORDERS.items():
            handles.append(enqueue_payment(order_id, cents))
    for h in handles:
        h.wait_sent(timeout=30)
    print(f"{len(handles)} payment messages enqueued for {len(ORDERS)} orders")
    app.close()


if __name__ == "__main__":
    main()
