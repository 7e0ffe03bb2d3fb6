"""Expiry: a task not started by its ``expires`` time is not run, recorded as ``expired``, not dead-lettered."""

from __future__ import annotations

import time
from typing import Any

from kafka import KafkaConsumer, TopicPartition

from ktasks.ledger import Ledger
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until


def _end_offset(bootstrap: str, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None)
    try:
        tp = TopicPartition(topic, 0)
        return consumer.end_offsets([tp])[tp]
    finally:
        consumer.close()


def test_an_expired_task_is_not_run_and_the_ledger_records_it_as_expired(project: Any) -> None:
    p = project("""
        @app.task
        def report(n):
            effect("ran", n=n)
    """, partitions=1)
    handles = [p.app_module.report.apply_async(args=(1,), expires_s=0.5),
               p.app_module.report.apply_async(args=(4,), expires=0.5),
               # an ETA that expires before a worker takes it
               p.app_module.report.apply_async(args=(5,), countdown_s=0.2, expires_s=0.6)]
    stale_by = time.time() + 0.6  # their expiry is no later than this
    p.app_module.report.apply_async(args=(2,), expires_s=600)
    p.app_module.report.apply_async(args=(3,), countdown=0.5, queue=p.topic)
    p.app.flush()
    wait_until(lambda: time.time() > stale_by, 10, message="the first tasks' expiry")
    w = p.worker("-c", "1", "-Q", p.topic)
    assert sorted(e["n"] for e in wait_effects(p, "ran", 2)) == [2, 3], w.log()[-4000:]
    with Ledger(p.ledger_path) as ledger:
        found = wait_until(lambda: [e for h in handles for e in ledger.find(h.id) if e.state == "expired"]
                           if all(ledger.find(h.id) for h in handles) else None, 30,
                           message="expired entries in the ledger")
    assert sorted(e.key for e in found) == sorted(h.id for h in handles)
    assert all("expired at" in (e.note or "") for e in found)
    assert w.stop() == 0
    assert sorted(e["n"] for e in p.effects("ran")) == [2, 3], "the expired tasks never ran"
    assert _end_offset(p.bootstrap, p.topic + ".DLT") == 0, "expired tasks are not dead-lettered"
