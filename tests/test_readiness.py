"""A worker started while Kafka is down waits for it, with one clear line at a bounded rate."""

from __future__ import annotations

import time
from typing import Any

import pytest

from ktasks.dev import free_port
from ktasks.readiness import wait_for_cluster
from ktasks.settings import Settings
from tests.fixtures.worker import wait_effects
from tests.helpers import TcpForwarder, wait_until


def test_a_worker_started_before_kafka_waits_for_it_then_runs(project: Any, kafka_bootstrap: str) -> None:
    p = project("""
        @app.task
        def hello(n):
            effect("ran", n=n)
    """, partitions=1)
    port = free_port()
    module = p.dir / f"{p.module}.py"
    module.write_text(module.read_text().replace(repr(kafka_bootstrap), repr(f"127.0.0.1:{port}")))
    w = p.worker("-c", "1")
    w.wait_for_log(f"waiting for Kafka at 127.0.0.1:{port}: unreachable for", 60)
    started = time.monotonic()
    # Past the 10 s after which it used to exit with two chained tracebacks: still waiting, quietly.
    wait_until(lambda: w.proc.poll() is not None or time.monotonic() - started > 15, 30)
    assert w.proc.poll() is None, w.log()[-4000:]
    log = w.log()
    assert log.count("waiting for Kafka") == 1, log       # one line, not one per attempt
    assert "Traceback" not in log and "ECONNREFUSED" not in log, log
    forwarder = TcpForwarder(port, kafka_bootstrap)        # Kafka "comes up" at that address
    forwarder.start()
    try:
        w.wait_for_log(f"Kafka at 127.0.0.1:{port} answers after", 60)
        w.wait_assigned(90)
        p.app_module.hello.delay(1)
        p.app.flush()
        wait_effects(p, "ran", 1)
        assert w.stop() == 0
    finally:
        forwarder.stop()


def test_wait_for_cluster_lines_are_bounded_and_a_stop_ends_the_wait(caplog: Any) -> None:
    attempts = []

    def refused() -> None:
        attempts.append(time.monotonic())
        raise OSError("connection refused")

    settings = Settings({"bootstrap_servers": "127.0.0.1:1"})
    caplog.set_level("INFO", logger="ktasks.readiness")
    ok = wait_for_cluster(settings, "t", stop=lambda: len(attempts) >= 4, log_interval_s=3600, probe=refused)
    assert ok is False and len(attempts) == 4
    lines = [r.getMessage() for r in caplog.records if r.name == "ktasks.readiness"]
    assert lines == ["waiting for Kafka at 127.0.0.1:1: unreachable for 0 s (OSError: connection refused); "
                     "the worker starts when it answers"]
    calls = iter([OSError("refused"), None])

    def flaky() -> None:
        exc = next(calls)
        if exc is not None:
            raise exc

    caplog.clear()
    assert wait_for_cluster(settings, "t", probe=flaky) is True
    assert [r.levelname for r in caplog.records if r.name == "ktasks.readiness"] == ["WARNING", "INFO"]


def test_until_reachable_retries_what_clears_and_raises_the_rest_at_once(caplog: Any) -> None:
    from kafka.errors import KafkaConnectionError, TopicAuthorizationFailedError

    from ktasks.errors import TopicError
    from ktasks.readiness import until_reachable

    settings = Settings({"bootstrap_servers": "127.0.0.1:1"})
    topic_error = TopicError("creating topics ['t']: lost")
    topic_error.__cause__ = KafkaConnectionError("socket disconnected")
    errors = iter([KafkaConnectionError("socket disconnected"), topic_error, None])
    calls = []

    def flaky() -> None:
        calls.append(1)
        exc = next(errors)
        if exc is not None:
            raise exc

    caplog.set_level("INFO", logger="ktasks.readiness")
    assert until_reachable(settings, "t", flaky) is True
    assert len(calls) == 3
    assert "KafkaConnectionError" in caplog.text

    def denied() -> None:
        calls.append(1)
        raise TopicAuthorizationFailedError("not allowed")

    calls.clear()
    with pytest.raises(TopicAuthorizationFailedError):
        until_reachable(settings, "t", denied)
    assert len(calls) == 1     # not retried: it does not clear by waiting

    wrapped = TopicError("topic 't' has 1 partitions, 6 configured")

    def misconfigured() -> None:
        raise wrapped

    with pytest.raises(TopicError) as info:
        until_reachable(settings, "t", misconfigured)
    assert info.value is wrapped

    def down() -> None:
        calls.append(1)
        raise KafkaConnectionError("refused")

    calls.clear()
    assert until_reachable(settings, "t", down, stop=lambda: len(calls) >= 2) is False


def test_a_broker_lost_right_after_the_readiness_check_is_waited_out(project: Any) -> None:
    p = project("""
        @app.task
        def hello(n):
            effect("ran", n=n)
    """, partitions=1)
    # The fault stands for a broker that stops answering between the readiness check and the
    # metadata fetch (seen in a chaos run: the worker exited with a KafkaConnectionError traceback).
    w = p.worker("-c", "1", env={"KTASKS_FAULTS": "startup_metadata=raise-retriable*2"})
    w.wait_for_log("waiting for Kafka at", 60)
    w.wait_assigned(90)
    p.app_module.hello.delay(1)
    p.app.flush()
    wait_effects(p, "ran", 1)
    assert w.stop() == 0
    assert "Traceback" not in w.log(), w.log()[-4000:]
