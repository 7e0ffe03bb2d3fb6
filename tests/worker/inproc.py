"""A worker run inside the test process, one loop iteration at a time, on the real broker.

Some defects live between the worker's loop and its rebalance callbacks (a
callback racing the loop, a revoke while a task runs, a consumer left in an
odd state by kafka-python). A ``ktasks worker`` subprocess cannot be stopped at
those points, so :class:`InProcessWorker` builds the real :class:`Worker` with
its real pool of spawned children and a real consumer in the test's group,
assigns partitions by hand (``consumer.assign``) and calls the same
callbacks kafka-python would, from the threads kafka-python would use.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from kafka import TopicPartition

from ktasks.kafka.consumer import build_consumer
from ktasks.worker.worker import Worker

T = TypeVar("T")


class InProcessWorker:
    """The worker of ``project``, stepped by the test. Close it with :meth:`close`."""

    def __init__(self, project: Any, concurrency: int = 1, **overrides: Any) -> None:
        # Spawned children get the parent's sys.path: they import the project's module from it.
        if str(project.dir) not in sys.path:
            sys.path.insert(0, str(project.dir))
        self.project = project
        self.worker = Worker(project.app, f"{project.module}:app", concurrency=concurrency,
                             overrides=overrides or None)

    def tp(self, partition: int, topic: str | None = None) -> TopicPartition:
        return TopicPartition(topic or self.project.topic, partition)

    def start(self, partitions: list[int], before_assign: Callable[[Any], None] | None = None,
              notify: bool = True) -> list[TopicPartition]:
        """Start the children and a consumer owning ``partitions`` of the task topic.

        ``before_assign(consumer)`` runs once the consumer exists, before the worker hears of
        its partitions. ``notify=False``: the worker is not told (its assignment callback
        has not run yet).
        """
        w = self.worker
        topics = w.topics + list(w._retry_topics)
        w.app.ensure_topics(topics + [w.app.dead_letter_topic(t) for t in w.topics])
        w.pool.start()
        w.consumer = build_consumer(w.settings, w.group_id, w.app.client_id)
        tps = [self.tp(p) for p in partitions]
        w.consumer.assign(tps)
        if before_assign is not None:
            before_assign(w.consumer)
        if notify:
            w._on_assigned(tps)
        return tps

    def in_thread(self, fn: Callable[[], T]) -> tuple[threading.Thread, list[T]]:
        """Run ``fn`` on a short-lived thread, as kafka-python runs rebalance callbacks."""
        out: list[T] = []
        thread = threading.Thread(target=lambda: out.append(fn()), name="ktasks-rebalance", daemon=True)
        thread.start()
        return thread, out

    def step_until(self, predicate: Callable[[], Any], timeout_s: float, message: str = "condition not met"
                   ) -> Any:
        """Run loop iterations until ``predicate()`` is truthy (AssertionError after ``timeout_s``)."""
        import time

        deadline = time.monotonic() + timeout_s
        while True:
            self.worker._iterate()
            result = predicate()
            if result:
                return result
            if time.monotonic() >= deadline:
                raise AssertionError(f"{message} (waited {timeout_s:g} s)")

    def close(self) -> None:
        w = self.worker
        w.pool.terminate()
        if w.consumer is not None:
            w.consumer.close(autocommit=False)
