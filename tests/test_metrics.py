"""Prometheus metrics: counting from worker hooks (no broker), and a real worker's /metrics."""

from __future__ import annotations

import re
import socket
import urllib.request
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ktasks.errors import ConfigurationError
from ktasks.message import Message
from ktasks.metrics import METRICS, Metrics
from ktasks.middleware import TaskEvent
from tests.helpers import wait_until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` of an exposition text."""
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text_or_samples: Any, name: str, **labels: str) -> float | None:
    got = samples(text_or_samples) if isinstance(text_or_samples, str) else text_or_samples
    return got.get((name, tuple(sorted(labels.items()))))


def _record(offset: int = 0) -> Any:
    return SimpleNamespace(topic="t", partition=0, offset=offset)


def test_events_count_once_per_outcome_and_feed_the_histograms():
    m = Metrics()
    msg = Message(task="ok")
    for i in range(3):
        m.task_finished(TaskEvent.of(msg, "ok", "succeeded", _record(i), run_time_s=0.002))
    m.task_finished(TaskEvent.of(msg, "boom", "retried", _record(3), run_time_s=0.2))
    m.task_finished(TaskEvent.of(msg, "boom", "failed", _record(4), run_time_s=0.2, reason="retries-exhausted"))
    m.task_finished(TaskEvent.of(None, "(undecodable)", "dead_lettered", _record(5), started=False,
                                 reason="undecodable"))
    m.task_finished(TaskEvent.of(msg, "ok", "skipped", _record(6)))
    m.commit_failed(RuntimeError("x"))
    m.offsets_committed({})
    m.offsets_committed({})
    text = m.render().decode()
    assert value(text, "ktasks_tasks_finished_total", task="ok", outcome="succeeded") == 3
    assert value(text, "ktasks_tasks_finished_total", task="boom", outcome="retried") == 1
    assert value(text, "ktasks_tasks_finished_total", task="boom", outcome="failed") == 1
    assert value(text, "ktasks_tasks_finished_total", task="(undecodable)", outcome="dead_lettered") == 1
    assert value(text, "ktasks_tasks_finished_total", task="ok", outcome="skipped") == 1
    # Run time only for tasks a child ran; queued time for everything that started.
    assert value(text, "ktasks_task_run_time_seconds_count", task="ok") == 3
    assert value(text, "ktasks_task_run_time_seconds_count", task="boom") == 2
    assert value(text, "ktasks_task_run_time_seconds_bucket", task="ok", le="0.0025") == 3
    assert value(text, "ktasks_task_queued_seconds_count", task="ok") == 4
    assert value(text, "ktasks_task_queued_seconds_count", task="(undecodable)") is None
    assert value(text, "ktasks_dead_letters_total", reason="retries-exhausted") == 1
    assert value(text, "ktasks_dead_letters_total", reason="undecodable") == 1
    assert value(text, "ktasks_commits_total") == 2
    assert value(text, "ktasks_commit_failures_total") == 1


def test_queued_time_is_from_due_for_a_retry_and_never_negative():
    import time

    now = time.time()
    retry = Message(task="t", created=now - 100, due=now - 2)
    event = TaskEvent.of(retry, "t", "succeeded", _record(), run_time_s=0.5)
    assert event.queued_s is not None and 1.0 < event.queued_s < 10.0
    future = Message(task="t", created=now + 60)   # a producer whose clock runs ahead
    assert TaskEvent.of(future, "t", "succeeded", _record()).queued_s == 0.0


def test_every_defined_metric_is_exposed_once_a_worker_is_attached():
    m = Metrics()
    m.worker_started(_fake_worker())
    names = {fam.name for fam in text_string_to_metric_families(m.render().decode())}
    for d in METRICS:
        assert d.name.removesuffix("_total") in names, d.name
        assert d.name.startswith("ktasks_")
        assert (d.kind == "counter") == d.name.endswith("_total")


def _fake_worker() -> Any:
    from kafka import TopicPartition

    ps = SimpleNamespace(tp=TopicPartition("t", 1), paused=True,
                         tracker=SimpleNamespace(committed=40))
    consumer = SimpleNamespace(highwater=lambda tp: 52)
    child = SimpleNamespace(process=SimpleNamespace(is_alive=lambda: True))
    return SimpleNamespace(partitions={ps.tp: ps}, pool=SimpleNamespace(children=[child, child], replaced=3),
                           publishing=[SimpleNamespace(kind="retry")], _in_flight=5, ready=[1, 2],
                           concurrency=2, consumer=consumer, group_id="g", host="h")


def test_state_gauges_are_read_from_the_worker():
    m = Metrics()
    m.worker_started(_fake_worker())
    text = m.render().decode()
    assert value(text, "ktasks_consumer_lag", topic="t", partition="1") == 12
    assert value(text, "ktasks_partitions_paused") == 1
    assert value(text, "ktasks_tasks_in_flight") == 5
    assert value(text, "ktasks_tasks_ready") == 2
    assert value(text, "ktasks_children") == 2
    assert value(text, "ktasks_children_replaced_total") == 3
    assert value(text, "ktasks_publishes_pending", kind="retry") == 1
    assert value(text, "ktasks_publishes_pending", kind="dead-letter") == 0


def test_a_port_in_use_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(ConfigurationError, match=f"cannot listen on 127.0.0.1:{port}"):
            Metrics().serve(port)


def test_serves_over_http():
    m = Metrics()
    port = m.serve(0)
    try:
        m.offsets_committed({})
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        assert value(body, "ktasks_commits_total") == 1
    finally:
        m.close()


TASKS = """
from ktasks.errors import Retry

@app.task
def ok(i):
    time.sleep(0.02)

@app.task(max_retries=1)
def boom(i):
    raise Retry(exc=ValueError(f"boom {i}"), countdown_s=0.1)
"""


def scrape(port: int) -> dict[Any, float]:
    return samples(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode())


@pytest.mark.slow
def test_worker_metrics_match_the_tasks_run_while_draining_a_backlog(project):
    p = project(TASKS)
    n_ok, n_boom = 150, 4
    for i in range(n_ok):
        p.app_module.ok.delay(i)
    for i in range(n_boom):
        p.app_module.boom.delay(i)
    p.app.send_task("not.registered", [1])   # the worker dead-letters it
    p.app_module.ok.apply_async((-1,), expires=0.2)   # expired before any worker starts
    p.app.flush(10)
    w = p.worker("-c", "2", "--metrics-port", "0")
    w.wait_for_log("serving Prometheus metrics on http://127.0.0.1:")
    port = int(re.search(r"serving Prometheus metrics on http://127\.0\.0\.1:(\d+)/metrics", w.log()).group(1))
    ok, boom = p.app_module.ok.name, p.app_module.boom.name
    lags: list[float] = []

    def drained() -> dict[Any, float] | None:
        got = scrape(port)
        lag = [v for (name, labels), v in got.items()
               if name == "ktasks_consumer_lag" and ("topic", p.topic) in labels]
        lags.append(sum(lag) if lag else -1)
        done = value(got, "ktasks_tasks_finished_total", task=ok, outcome="succeeded") == n_ok \
            and value(got, "ktasks_tasks_finished_total", task=boom, outcome="failed") == n_boom
        return got if done and len(lag) == 2 and sum(lag) == 0 else None

    try:
        got = wait_until(drained, 90, interval_s=0.05, message="metrics never showed the backlog drained")
    except AssertionError:
        print(w.log()[-3000:])
        print({k: v for k, v in scrape(port).items() if "bucket" not in k[0]})
        raise
    assert max(lags) > 0, "lag was never seen above 0 while draining"
    assert value(got, "ktasks_tasks_finished_total", task=boom, outcome="retried") == n_boom
    assert value(got, "ktasks_tasks_finished_total", task=ok, outcome="expired") == 1, [k for k in got if "finished_total" in k[0]]
    assert value(got, "ktasks_tasks_finished_total", task="(unregistered)", outcome="dead_lettered") == 1
    assert value(got, "ktasks_task_run_time_seconds_count", task=ok) == n_ok
    assert value(got, "ktasks_task_run_time_seconds_count", task=boom) == 2 * n_boom
    assert value(got, "ktasks_task_queued_seconds_count", task=ok) == n_ok
    assert value(got, "ktasks_task_queued_seconds_count", task=boom) == 2 * n_boom
    # Each ok task sleeps 20 ms: none in a bucket below it.
    assert value(got, "ktasks_task_run_time_seconds_bucket", task=ok, le="0.01") == 0
    assert value(got, "ktasks_dead_letters_total", reason="retries-exhausted") == n_boom
    assert value(got, "ktasks_dead_letters_total", reason="unregistered") == 1
    assert value(got, "ktasks_dead_letters_total", reason="expired") is None   # recorded as expired, not dead-lettered
    assert value(got, "ktasks_children") == 2
    assert (value(got, "ktasks_commits_total") or 0) > 0
    assert value(got, "ktasks_tasks_in_flight") == 0
    # The same counts the worker logs at shutdown.
    assert w.stop() == 0
    assert f"{n_ok} succeeded" in w.log()
