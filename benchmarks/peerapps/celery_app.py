"""The Celery side, on Redis or on kombu's Kafka transport (``BENCH_BROKER_URL``).

Celery's defaults otherwise (acks before the task runs, prefetch multiplier
4), with results ignored, as most users run it. On Kafka, remote control is
off: the transport has no fanout exchanges, so the worker cannot start with it.
"""

from __future__ import annotations

import os

from celery import Celery

from . import record


def make_app(broker_url: str, queue: str) -> Celery:
    """The Celery app, for the worker (below) and for the harness's enqueuing."""
    on_kafka = broker_url.startswith(("kafka://", "confluentkafka://"))
    celery = Celery("benchpeers", broker=broker_url)
    celery.conf.update(
        task_default_queue=queue,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        worker_enable_remote_control=not on_kafka,
        broker_transport_options={"num_partitions": 2} if on_kafka else {},
    )
    return celery


app = make_app(os.environ.get("BENCH_BROKER_URL", "redis://127.0.0.1:6379/0"), os.environ.get("BENCH_QUEUE", "bench"))


@app.task(name="bench.work")
def work(enqueued_at: float, sleep_s: float) -> None:
    """The shared benchmark task."""
    record.work(enqueued_at, sleep_s)
