"""The Dramatiq side: a Redis broker (``BENCH_REDIS_URL``), one actor on ``BENCH_QUEUE``."""

from __future__ import annotations

import os

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from . import record

broker = RedisBroker(url=os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0"))
dramatiq.set_broker(broker)


@dramatiq.actor(actor_name="bench_work", queue_name=os.environ.get("BENCH_QUEUE", "bench"), max_retries=0)
def work(enqueued_at: float, sleep_s: float) -> None:
    """The shared benchmark task."""
    record.work(enqueued_at, sleep_s)
