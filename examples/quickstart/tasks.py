"""The quickstart app: three tasks, one of which fails once and is retried.

Run it with ``make quickstart`` from the repository root, or by hand::

    ktasks dev up
    python examples/quickstart/enqueue.py
    ktasks worker -A tasks:app -c 2 --burst      # from examples/quickstart/
"""

from __future__ import annotations

import hashlib
import time

from ktasks import App, TaskContext

# bootstrap_servers defaults to 127.0.0.1:9092 (ktasks dev up); KTASKS_BOOTSTRAP_SERVERS overrides it.
app = App("quickstart", partitions=3)


@app.task
def add(x: int, y: int) -> int:
    return x + y


@app.task
def thumbnail(image_id: str) -> str:
    time.sleep(0.05)  # pretend to resize an image
    return hashlib.sha1(image_id.encode()).hexdigest()[:12]


@app.task(bind=True, max_retries=3, retry_backoff_s=0.5)
def fetch_report(ctx: TaskContext, day: str) -> str:
    if ctx.attempt == 0:
        # The first attempt fails, to show a retry going through the retry topic.
        raise ConnectionError(f"report service unavailable for {day}")
    return f"report for {day}: ok (attempt {ctx.attempt})"
