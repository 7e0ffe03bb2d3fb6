"""Chains, groups and chords on the real broker, including a kill -9 of the chord's join owner."""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaConsumer

from ktasks import TaskFailed, chain, chord, group
from ktasks.message import unpack
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

SOURCE = """
    @app.task(max_retries=0)
    def add(a, b):
        effect("add", a=a, b=b)
        return a + b

    @app.task(max_retries=0)
    def slow_square(x):
        time.sleep(0.3)
        effect("member", x=x)
        return x * x

    @app.task(max_retries=0)
    def fail(x):
        raise KeyError("member %s has no data" % x)

    @app.task(max_retries=0)
    def total(xs):
        effect("callback", value=sum(xs))
        return sum(xs)
"""


def chord_records(p: Any, chord_id: str) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(f"{p.app.name}.chords", bootstrap_servers=p.bootstrap, auto_offset_reset="earliest",
                             consumer_timeout_ms=1500, group_id=None)
    try:
        return [body for r in consumer if (body := unpack(r.value))["chord"] == chord_id]
    finally:
        consumer.close()


@pytest.fixture
def running(project: Any) -> Any:
    """A project with one worker of two children, stopped afterwards."""
    p = project(SOURCE)
    w = p.worker("-c", "2")
    yield p
    w.stop()


def test_chain_group_and_chord_complete_with_the_right_values(running: Any) -> None:
    p = running
    m = p.app_module
    assert chain(m.add.s(1, 2), m.add.s(10), m.add.s(100)).delay().get(timeout=90) == 113
    assert [(e["a"], e["b"]) for e in p.effects("add")] == [(1, 2), (3, 10), (13, 100)]
    assert chain(m.add.s(1, 2), m.add.si(5, 5)).delay().get(timeout=60) == 10
    assert group(m.add.s(i, i) for i in range(5)).delay().get(timeout=60) == [0, 2, 4, 6, 8]
    c = chord(group(*[m.add.s(i, 1) for i in range(20)]), m.total.s())
    assert c.delay().get(timeout=120) == sum(range(1, 21))
    wait_until(lambda: any(r["kind"] == "done" for r in chord_records(p, c.id)), 30)
    assert [e["value"] for e in p.effects("callback")] == [210]


def test_a_failing_member_fails_the_chord_and_a_failing_step_the_chain(running: Any) -> None:
    p = running
    m = p.app_module
    with pytest.raises(TaskFailed) as caught:
        chord(group(m.add.s(1, 1), m.fail.s(7), m.add.s(2, 2)), m.total.s()).delay().get(timeout=90)
    assert caught.value.remote_type == "KeyError"
    assert caught.value.task_name.endswith(".fail") and "chord member 1" in str(caught.value)
    with pytest.raises(TaskFailed, match="chain step"):
        chain(m.add.s(1, 2), m.fail.s(), m.add.s(1)).delay().get(timeout=90)
    assert not p.effects("callback"), "the callback of a failed chord never runs"


def _owners(p: Any) -> dict[int, set[int]]:
    """Each live worker's last logged chord-join partitions."""
    owned = {}
    for i, w in enumerate(p.workers):
        lines = [ln for ln in w.log().splitlines() if "chord joiner owns" in ln]
        if w.proc.poll() is None and lines:
            owned[i] = set(int(x) for x in lines[-1].split("owns [")[1].rstrip("]").split(",") if x.strip())
    return owned


def test_the_callback_runs_exactly_once_when_the_join_owner_is_killed_mid_chord(project: Any) -> None:
    p = project(SOURCE, partitions=2)
    m = p.app_module
    for _ in range(2):
        p.worker("-c", "2")
    def settled() -> bool:
        owned = list(_owners(p).values())
        return len(owned) == 2 and all(owned) and owned[0].isdisjoint(owned[1]) and owned[0] | owned[1] == {0, 1}

    wait_until(settled, 90, message="each worker owns one chord partition")
    c = chord(group(*[m.slow_square.s(i) for i in range(20)]), m.total.s())
    handle = c.delay()
    from ktasks.results.records import partition_for

    assert c.id is not None
    part = partition_for(c.id, 2)

    def sole_owner() -> list[int] | None:
        # Read again until settled: a join finishing late can move the partitions once more, and a
        # worker's last "owns" line can lag its new assignment (two workers seemed to own it in CI).
        owners = [i for i, parts in _owners(p).items() if part in parts]
        return owners if settled() and len(owners) == 1 else None

    [owner] = wait_until(sole_owner, 60, message=f"one worker owns chord partition {part}")
    wait_effects(p, "member", 6, timeout_s=60)
    assert not p.effects("callback")
    p.workers[owner].kill()
    assert handle.get(timeout=180) == sum(i * i for i in range(20))
    wait_until(lambda: any(r["kind"] == "done" for r in chord_records(p, c.id)), 60)
    assert [e["value"] for e in p.effects("callback")] == [2470], "the callback ran exactly once"
    members = {r["i"] for r in chord_records(p, c.id) if r["kind"] == "member"}
    assert members == set(range(20))
    for w in p.workers:
        if w.proc.poll() is None:
            w.stop()
