"""Logging: ``--log-format json`` writes one JSON object per line; task lines carry name, id, partition, offset."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from ktasks.logs import JsonFormatter, TaskFieldsFilter, TextFormatter, task_context, task_extra
from tests.fixtures.worker import wait_effects

SOURCE = """
import logging

log = logging.getLogger("myapp.tasks")

@app.task
def hello(n):
    log.info("hello from the task", extra={"customer": "c-%d" % n})
    effect("ran", n=n)

@app.task(max_retries=0)
def fails(n):
    raise RuntimeError(f"boom {n}")
"""


def test_json_log_lines_from_a_real_worker(project: Any) -> None:
    p = project(SOURCE, partitions=2)
    w = p.worker("-c", "2", "--log-format", "json")
    w.wait_assigned()
    sent = {}
    for n in range(4):
        handle = p.app_module.hello.apply_async(args=(n,), key=f"k{n}")
        record = handle.wait_sent(timeout=30)
        sent[handle.id] = record
    bad = p.app_module.fails.delay(9)
    sent[bad.id] = bad.wait_sent(timeout=30)
    wait_effects(p, "ran", 4)
    w.wait_for_log("sending to the dead-letter topic")
    assert w.stop() == 0

    lines = [line for line in w.log().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]            # every line is one JSON object
    for e in entries:
        assert {"ts", "level", "logger", "process", "pid", "message"} <= set(e), e

    task_lines = [e for e in entries if "task_id" in e]
    assert {e["task_id"] for e in task_lines} == set(sent)
    for e in task_lines:
        where = sent[e["task_id"]]
        assert e["topic"] == where.topic
        assert e["partition"] == where.partition
        assert e["offset"] == where.offset
        assert e["task_name"].endswith((".hello", ".fails"))

    def messages(task_id: str) -> list[str]:
        return [e["message"] for e in task_lines if e["task_id"] == task_id]

    for task_id in sent:
        assert any(" started (attempt 0)" in m for m in messages(task_id))
    assert any("succeeded in" in m for tid in sent if tid != bad.id for m in messages(tid))
    failed = [e for e in task_lines if e["task_id"] == bad.id and e["level"] == "ERROR"]
    assert failed and "boom 9" in failed[0]["message"]

    # The task's own log line carries the task's fields and its own extra fields.
    own = [e for e in entries if e["logger"] == "myapp.tasks"]
    assert len(own) == 4
    assert {e["customer"] for e in own} == {"c-0", "c-1", "c-2", "c-3"}
    assert all(e["task_id"] in sent and e["task_name"].endswith(".hello") for e in own)
    # Lines not about a task have no task fields.
    assert any("partitions assigned" in e["message"] and "task_id" not in e for e in entries)


@pytest.fixture
def capture() -> Iterator[tuple[logging.Logger, io.StringIO, logging.Handler]]:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(TaskFieldsFilter())
    log = logging.getLogger("ktasks.tests.logs")
    log.addHandler(handler)
    log.setLevel(logging.DEBUG)
    log.propagate = False
    try:
        yield log, stream, handler
    finally:
        log.removeHandler(handler)


def test_json_formatter_fields_extras_and_exceptions(capture: Any) -> None:
    log, stream, handler = capture
    handler.setFormatter(JsonFormatter("worker"))
    log.info("task %s done", "t.x", extra={**task_extra("t.x", "id1", "orders", 2, 17), "region": "eu"})
    try:
        raise ValueError("bad")
    except ValueError:
        log.exception("failed")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "task t.x done" and first["level"] == "INFO" and first["process"] == "worker"
    assert (first["task_name"], first["task_id"], first["topic"], first["partition"], first["offset"]) == \
        ("t.x", "id1", "orders", 2, 17)
    assert first["region"] == "eu"
    assert first["ts"].endswith("Z")
    assert "task_id" not in second and "ValueError: bad" in second["exc"]


def test_text_formatter_and_task_context(capture: Any) -> None:
    log, stream, handler = capture
    handler.setFormatter(TextFormatter("child-0"))
    with task_context(task_extra("t.y", "id2", "orders", 1, 5)):
        log.info("inside")
    log.info("outside")
    inside, outside = stream.getvalue().splitlines()
    assert "[child-0:" in inside and inside.endswith("ktasks.tests.logs: inside [orders/1@5]")
    assert outside.endswith("ktasks.tests.logs: outside")
