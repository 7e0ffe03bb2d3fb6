"""The middleware seam as a user writes it: intake decisions, task options, headers and child hooks."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ktasks import App, ConfigurationError, Middleware
from ktasks.message import decode
from tests.fixtures.worker import wait_effects
from tests.worker.test_retries import headers, read_topic

SOURCE = """
    import time
    from ktasks import Middleware, Skip, Defer, Reject

    class Gate(Middleware):
        task_options = {"gate": None}

        def enqueue_headers(self, message, topic):
            return [("x-gated", b"yes")]

        def child_started(self, app):
            effect("child", pid=os.getpid())

        def intake(self, record):
            mode = record.task.option("gate")
            n = record.message.args[0]
            if mode == "skip" and n == 1:
                return Skip(reason="gate says skip")
            if mode == "reject" and n == 3:
                return Reject("rejected by the gate", exc_type="tests.Gated")
            if mode == "defer" and not record.message.kwargs.get("deferred_once"):
                when = record.message.created + 1.5
                if time.time() < when:
                    return Defer(when)
            return None

    app.add_middleware(Gate())

    @app.task(gate="skip")
    def skipped(n):
        effect("ran", n=n)

    @app.task(gate="reject")
    def rejected(n):
        effect("ran", n=n)

    @app.task(gate="defer")
    def deferred(n):
        effect("ran", n=n, at=time.time())
"""


def test_user_middleware_skips_defers_and_dead_letters_records(project: Any) -> None:
    p = project(SOURCE, partitions=1)
    m = p.app_module
    m.skipped.delay(1)
    m.skipped.delay(2)
    m.rejected.delay(3)
    sent = time.time()
    m.deferred.delay(4)
    m.app.flush()
    w = p.worker("-c", "1", "-Q", p.topic)
    try:
        ran = wait_effects(p, "ran", 2, timeout_s=20)
    except AssertionError:
        print(w.log()[-5000:])
        raise
    assert sorted(e["n"] for e in ran) == [2, 4], w.log()[-4000:]
    assert [e for e in ran if e["n"] == 4][0]["at"] >= sent + 1.4, "the deferred record ran before its time"
    [dead] = read_topic(p.bootstrap, p.topic + ".DLT", 1)
    assert headers(dead)["ktasks-dlt-reason"] == "rejected"
    assert headers(dead)["kafka_dlt-exception-message"] == "rejected by the gate"
    assert headers(dead)["kafka_dlt-exception-fqcn"] == "tests.Gated"
    assert headers(dead)["x-gated"] == "yes", "enqueue_headers added the header"
    assert decode(dead.value).args == [3]
    assert p.effects("child"), "child_started ran in the child"
    assert w.stop() == 0
    assert sorted(e["n"] for e in p.effects("ran")) == [2, 4]


def test_task_options_are_those_of_the_core_and_of_the_middleware() -> None:
    class Owner(Middleware):
        task_options = {"colour": "blue"}

    app = App("opts", middleware=[Owner()])

    @app.task(colour="red")
    def red() -> None: ...

    @app.task
    def plain() -> None: ...

    assert red.option("colour") == "red" and plain.option("colour") == "blue"
    with pytest.raises(ConfigurationError, match="unknown option 'colur'"):
        app.task(colur="red")(lambda: None)
