"""``async def`` tasks: an event loop per child, ``--async-concurrency`` coroutines in flight, each committed
when it finishes; time limits, cancellation, retries and the ledger as for plain tasks."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import pytest

from ktasks import App, ConfigurationError
from tests.fixtures.worker import wait_effects
from tests.worker.test_retries import headers, read_topic

OVERLAP = """
import asyncio

IN_FLIGHT = 0

@app.task
async def nap(n):
    global IN_FLIGHT
    IN_FLIGHT += 1
    peak = IN_FLIGHT          # how many naps of this child are running right now, this one included
    try:
        await asyncio.sleep(0.1)
    finally:
        IN_FLIGHT -= 1
    effect("ran", n=n, peak=peak)
"""


def test_200_sleeping_coroutines_overlap_on_one_child(project: Any, kafka_admin: Any) -> None:
    p = project(OVERLAP, partitions=2)
    for n in range(200):
        p.app_module.nap.delay(n)
    p.app.flush()
    w = p.worker("-c", "1", "--async-concurrency", "50", "--burst")
    assert w.wait(120) == 0, w.log()[-4000:]
    ran = p.effects("ran")
    assert Counter(e["n"] for e in ran) == Counter(range(200)), "each ran exactly once"
    assert len({e["pid"] for e in ran}) == 1, "on one child"
    peak = max(e["peak"] for e in ran)
    # One after another, peak would be 1 and 200 naps would take 20 s; 50 slots kept mostly full.
    assert 25 <= peak <= 50, f"peak overlap {peak}"
    assert sum(p.committed(kafka_admin).values()) == 200, "every record committed"


LIMITS = """
import asyncio

@app.task(time_limit=0.5, max_retries=0)
async def too_slow(n):
    effect("slow-started", n=n)
    try:
        await asyncio.sleep(30)
    except asyncio.CancelledError:
        effect("slow-cancelled", n=n)     # a time limit cancels at the current await
        raise

@app.task(bind=True, time_limit=0.5, max_retries=2, retry_backoff_s=0.1)
async def slow_then_fast(ctx, n):
    effect("attempt", n=n, attempt=ctx.attempt)
    await asyncio.sleep(30 if ctx.attempt == 0 else 0)
    effect("done", n=n, attempt=ctx.attempt)

@app.task(max_retries=0)
async def cancels_itself(n):
    asyncio.current_task().cancel()
    await asyncio.sleep(1)

@app.task
async def once(n):
    effect("once", n=n)
    await asyncio.sleep(0.2)

@app.task
async def spawns(n):
    await child_task.delay_async(n)     # enqueue from async code without blocking the loop

@app.task
def child_task(n):
    effect("child", n=n)
"""


def test_time_limits_cancellation_retries_and_the_ledger(project: Any) -> None:
    p = project(LIMITS, partitions=1)
    m = p.app_module
    m.too_slow.delay(1)
    m.slow_then_fast.delay(2)
    m.cancels_itself.delay(3)
    m.once.apply_async(args=(4,), idempotency_key="same")
    m.once.apply_async(args=(4,), idempotency_key="same")
    m.spawns.delay(5)
    p.app.flush()
    w = p.worker("-c", "1", "--async-concurrency", "10")
    assert [e["attempt"] for e in wait_effects(p, "done", 1)] == [1], "the timed-out attempt was retried"
    wait_effects(p, "child", 1)
    dead = {headers(r)["kafka_dlt-exception-fqcn"]: headers(r) for r in read_topic(p.bootstrap, p.topic + ".DLT", 2)}
    assert set(dead) == {"ktasks.errors.TimeLimitExceeded", "ktasks.errors.TaskCancelled"}
    assert dead["ktasks.errors.TimeLimitExceeded"]["ktasks-dlt-reason"] == "time-limit"
    assert p.effects("slow-cancelled"), "the coroutine saw the cancellation"
    assert [e["n"] for e in p.effects("once")] == [4], "the duplicate key was skipped"
    assert "already succeeded (ledger key same)" in w.log()
    assert w.stop() == 0


def test_ledger_transaction_is_refused_for_async_tasks(closed_port: int) -> None:
    app = App("aio-refuse", bootstrap_servers=f"127.0.0.1:{closed_port}")

    async def writes(ctx: Any) -> None: ...

    with pytest.raises(ConfigurationError, match="not supported for async def tasks"):
        app.task(bind=True, ledger_transaction=True)(writes)


def test_eager_async_tasks_and_delay_async(closed_port: int) -> None:
    app = App("aio-eager", bootstrap_servers=f"127.0.0.1:{closed_port}", eager=True)

    @app.task(bind=True, max_retries=1, retry_for=(ConnectionError,))
    async def fetch(ctx: Any, n: int) -> int:
        await asyncio.sleep(0)
        if ctx.attempt == 0:
            raise ConnectionError("once")
        return n * 2

    assert fetch.delay(4).get() == 8            # from sync code: on a new loop

    async def caller() -> Any:
        plain = fetch.delay(5)                   # from inside a running loop: in a thread
        awaited = await fetch.delay_async(6)
        return plain.get(), awaited.get(), awaited.retries

    assert asyncio.run(caller()) == (10, 12, 1)
    app.close(timeout_s=1)
