"""``rate_limit``: parsing, the slots it hands out, and a rate-limited task on the real broker."""

from __future__ import annotations

from typing import Any

import pytest

from ktasks import App, ConfigurationError
from ktasks.message import Message
from ktasks.middleware import Defer, Intake
from ktasks.middleware.ratelimit import RateLimit, parse_rate
from tests.fixtures.worker import wait_effects


@pytest.mark.parametrize(("given", "per_s"), [("100/s", 100.0), ("30/m", 0.5), ("36/h", 0.01), (5, 5.0),
                                               ("2", 2.0)])
def test_rates_parse_per_second_minute_and_hour(given: Any, per_s: float) -> None:
    assert parse_rate(given) == pytest.approx(per_s)


@pytest.mark.parametrize("bad", ["fast", "10/d", "0/s", "-1/m", True, [1]])
def test_a_bad_rate_is_refused_when_the_task_is_declared_naming_it(bad: Any) -> None:
    app = App("ratelimit-test", bootstrap_servers="localhost:1")
    with pytest.raises(ConfigurationError, match="rate_limit="):
        app.task(rate_limit=bad)(lambda: None)


def test_each_record_gets_its_own_slot_and_keeps_it_when_offered_again() -> None:
    app = App("ratelimit-test", bootstrap_servers="localhost:1")

    @app.task(rate_limit="2/s")
    def limited() -> None: ...

    limit = next(m for m in app.middleware if isinstance(m, RateLimit))
    records = [Intake(Message(task=limited.name), limited, "t", 0, o, None) for o in range(3)]
    first, second, third = (limit.intake(r) for r in records)
    assert first is None, "the first record runs at once"
    assert isinstance(second, Defer) and isinstance(third, Defer)
    assert third.until - second.until == pytest.approx(0.5)
    again = limit.intake(records[2])
    assert isinstance(again, Defer) and again.until == third.until, "offered again, the same slot"


SOURCE = """
    import time

    @app.task(rate_limit="5/s")
    def limited(n):
        effect("limited", n=n, at=time.time())

    @app.task
    def plain(n):
        effect("plain", n=n, at=time.time())

    @app.task(rate_limit="5/s")
    def keyed(n):
        effect("keyed", n=n, at=time.time())
"""


def test_a_rate_limited_task_runs_at_its_rate_without_holding_up_its_partition(project: Any) -> None:
    p = project(SOURCE, partitions=1)
    m = p.app_module
    for n in range(10):
        m.limited.delay(n)
    for n in range(5):
        m.plain.delay(n)
    for n in range(4):
        m.keyed.apply_async(args=[n], key="same")
    m.app.flush()
    w = p.worker("-c", "2", "-Q", p.topic)
    try:
        limited = wait_effects(p, "limited", 10, timeout_s=60)
        plain = wait_effects(p, "plain", 5, timeout_s=30)
        keyed = wait_effects(p, "keyed", 4, timeout_s=30)
    except AssertionError:
        print(w.log()[-5000:])
        raise
    starts = sorted(e["at"] for e in limited)
    assert starts[-1] - starts[0] >= 9 / 5 * 0.9, f"10 records at 5/s took {starts[-1] - starts[0]:.2f}s"
    assert max(e["at"] for e in plain) < starts[-1], "plain tasks behind the limited ones did not wait for them"
    assert [e["n"] for e in sorted(keyed, key=lambda e: e["at"])] == [0, 1, 2, 3], "key order kept"
    assert sorted(e["n"] for e in limited) == list(range(10)), "each ran once"
    assert w.stop() == 0
