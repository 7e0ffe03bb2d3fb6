"""``expires=``: a task that reaches a worker after its expiry is dead-lettered (reason ``expired``), not run."""

from __future__ import annotations

import time
from typing import Any

from ktasks.message import decode
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until
from tests.worker.test_retries import headers, read_topic


def test_expired_task_goes_to_the_dead_letter_topic_unrun_and_a_live_one_runs(project: Any) -> None:
    p = project("""
        @app.task
        def report(n):
            effect("ran", n=n)
    """, partitions=1)
    stale = p.app_module.report.apply_async(args=(1,), expires=0.5)
    stale_by = time.time() + 0.5  # its expiry is no later than this
    p.app_module.report.apply_async(args=(2,), expires=600)
    p.app_module.report.apply_async(args=(3,), countdown=0.5, queue=p.topic)
    p.app.flush()
    wait_until(lambda: time.time() > stale_by, 10, message="the first task's expiry")
    w = p.worker("-c", "1", "-Q", p.topic)
    assert sorted(e["n"] for e in wait_effects(p, "ran", 2)) == [2, 3], w.log()[-4000:]
    [dead] = read_topic(p.bootstrap, p.topic + ".DLT", 1)
    assert headers(dead)["ktasks-dlt-reason"] == "expired"
    assert headers(dead)["kafka_dlt-exception-fqcn"] == "ktasks.errors.TaskExpired"
    assert decode(dead.value).id == stale.id
    assert "expired at" in w.log()
    assert w.stop() == 0
    assert sorted(e["n"] for e in p.effects("ran")) == [2, 3], "the expired task never ran"
