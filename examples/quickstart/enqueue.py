"""Enqueue a few quickstart tasks and wait until Kafka has them."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tasks import add, app, fetch_report, thumbnail  # noqa: E402


def main() -> None:
    handles = [add.delay(i, i * i) for i in range(10)]
    handles += [thumbnail.apply_async(args=(f"img-{i}",), key=f"user-{i % 3}") for i in range(6)]
    handles.append(fetch_report.delay("2026-11-29"))
    for h in handles:
        sent = h.wait_sent(timeout=30)
        print(f"enqueued {h.id} -> {sent.topic}/{sent.partition}@{sent.offset}")
    print(f"{len(handles)} tasks enqueued")
    app.close()


if __name__ == "__main__":
    main()
