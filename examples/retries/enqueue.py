"""Enqueue the retries example's tasks and wait until Kafka has them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tasks import app, charge_card, fetch_rate, parse_invoice  # noqa: E402


def main() -> None:
    handles = [fetch_rate.delay(c) for c in ("EUR", "USD", "GBP")]
    handles.append(parse_invoice.delay("INV-7"))
    handles.append(charge_card.delay("4242-xxxx", 250000))
    for h in handles:
        h.wait_sent(timeout=30)
    print(f"{len(handles)} tasks enqueued: 3 will succeed after retries, 2 will be dead-lettered")
    app.close()


if __name__ == "__main__":
    main()
