"""Logging: ``--log-format json`` writes one JSON object per line; task lines carry name, id, partition, offset."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from ktasks.logs import (
    JsonFormatter,
    RepeatFilter,
    TaskFieldsFilter,
    TextFormatter,
    configure_logging,
    log_line,
    task_context,
    task_extra,
)
from tests.fixtures.worker import wait_effects

SOURCE = """
import logging
import time

log = logging.getLogger("myapp.tasks")

@app.task
def hello(n):
    log.info("hello from the task", extra={"customer": "c-%d" % n})
    effect("ran", n=n)

@app.task(max_retries=0)
def fails(n):
    raise RuntimeError(f"boom {n}")

@app.task
def slow(n):
    time.sleep(1.3)
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
    slow = p.app_module.slow.delay(1)
    sent[slow.id] = slow.wait_sent(timeout=30)
    wait_effects(p, "ran", 4)
    w.wait_for_log("sending to the dead-letter topic")
    w.wait_for_log(f"slow[{slow.id}] succeeded in")
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
        assert e["task_name"].endswith((".hello", ".fails", ".slow"))

    def messages(task_id: str) -> list[str]:
        return [e["message"] for e in task_lines if e["task_id"] == task_id]

    def child_lines(task_id: str) -> list[str]:
        return [e["message"] for e in task_lines if e["task_id"] == task_id and e["logger"] == "ktasks.worker.child"]

    for task_id in sent:
        assert any("(attempt 0" in m for m in messages(task_id)), messages(task_id)
    for task_id in sent:
        if task_id not in (bad.id, slow.id):
            # A quick task: one line as it ends, naming its attempt and run time.
            (line,) = child_lines(task_id)
            assert " succeeded in " in line and "(attempt 0): None" in line
    # A task still running after a second has its start logged while it runs, then its end.
    started, ended = child_lines(slow.id)
    assert "started (attempt 0), running for 1." in started and "succeeded in 1.3" in ended
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


def test_log_line_makes_the_record_logger_info_would(capture: Any) -> None:
    log, stream, handler = capture
    handler.setFormatter(logging.Formatter("%(asctime)s|%(filename)s|%(funcName)s|%(lineno)d|%(message)s"))
    text = TextFormatter("child-0")
    seen: list[logging.LogRecord] = []
    handler.addFilter(lambda record: seen.append(record) or True)
    line = sys._getframe().f_lineno + 1
    log_line(log, logging.INFO, "task %s[%s] started (attempt %d)", "t.z", "id3", 0,
             extra=task_extra("t.z", "id3", "orders", 0, 9))
    log_line(log, logging.DEBUG - 1, "below the level: %s", "never")
    (record,) = seen
    assert stream.getvalue().split("|")[1:] == ["test_logs.py", "test_log_line_makes_the_record_logger_info_would",
                                                str(line), "task t.z[id3] started (attempt 0)\n"]
    assert record.task_id == "id3" and record.offset == 9  # type: ignore[attr-defined]
    # The text formatter's cached time of day is the text logging.Formatter writes.
    assert text.formatTime(record) == logging.Formatter().formatTime(record)
    assert text.format(record).endswith("task t.z[id3] started (attempt 0) [orders/0@9]")


def test_kafka_pythons_repeated_lines_are_rate_limited_with_a_count(capture: Any) -> None:
    _, stream, handler = capture
    now = [1000.0]
    handler.addFilter(RepeatFilter(window_s=30.0, clock=lambda: now[0]))
    handler.setFormatter(TextFormatter("worker"))
    coordinator = logging.getLogger("kafka.coordinator")
    net = logging.getLogger("kafka.net.manager")
    ours = logging.getLogger("ktasks.tests.logs.repeats")
    for logger in (coordinator, net, ours):
        logger.addHandler(handler)
        logger.propagate = False
    try:
        for i in range(2000):
            coordinator.error("Marking the coordinator dead (node %s) for group %s: %s", "coordinator-0", "g",
                              f"error {i}")
            net.error("Connection failed: %s", "KafkaConnectionError: 111 ECONNREFUSED")
            ours.warning("a ktasks line is never held back")
            now[0] += 0.01                                   # 2,000 of each in 20 s
        lines = stream.getvalue().splitlines()
        assert sum("Marking the coordinator dead" in line for line in lines) == 1
        assert sum("Connection failed" in line for line in lines) == 1
        assert sum("never held back" in line for line in lines) == 2000
        now[0] += 30.0                                       # past the window: the next one, with the count
        coordinator.error("Marking the coordinator dead (node %s) for group %s: %s", "coordinator-0", "g", "x")
        last = stream.getvalue().splitlines()[-1]
        assert "Marking the coordinator dead" in last and last.endswith("(1999 similar lines suppressed)")
        coordinator.warning("Marking the coordinator dead (node %s) for group %s: %s", "c", "g", "x")
        assert "WARNING" in stream.getvalue().splitlines()[-1]  # another level is another kind of line
    finally:
        for logger in (coordinator, net, ours):
            logger.removeHandler(handler)
            logger.propagate = True


def test_the_handler_configure_logging_installs_rate_limits_kafka_python(capsys: Any) -> None:
    configure_logging("INFO", "json", process_name="worker")
    try:
        for _ in range(500):
            logging.getLogger("kafka.net.connection").error("Connection lost: %s", "refused")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
        assert [line["message"] for line in lines] == ["Connection lost: refused"]
    finally:
        root = logging.getLogger()
        for h in list(root.handlers):
            if getattr(h, "_ktasks", False):
                root.removeHandler(h)


def test_lines_kafka_python_formats_itself_are_rate_limited_by_their_shape(capture: Any) -> None:
    # kafka-python's selector formats its slow-task warning before the call: each line's text
    # differs (object address, duration), so before, every one of them passed (30 per worker
    # log in a 3-node coordinator kill).
    _, stream, handler = capture
    now = [1000.0]
    handler.addFilter(RepeatFilter(window_s=30.0, clock=lambda: now[0]))
    handler.setFormatter(TextFormatter("worker"))
    selector = logging.getLogger("kafka.net.selector")
    selector.addHandler(handler)
    selector.propagate = False
    try:
        for i in range(50):
            selector.warning(f"Task <kafka.net.selector.Task object at 0x7f38{i:04x}> ran for 0.{100 + i:03d}s "
                             "(>0.100s threshold). It is blocking the event loop")
            selector.warning(f"Unrelated warning about node {i}")
            now[0] += 0.5
        lines = stream.getvalue().splitlines()
        assert sum("ran for" in line for line in lines) == 1
        assert sum("Unrelated warning" in line for line in lines) == 1
        now[0] += 30.0
        selector.warning("Task <kafka.net.selector.Task object at 0x7f3800ff> ran for 0.5s (>0.100s threshold). "
                         "It is blocking the event loop")
        assert stream.getvalue().splitlines()[-1].endswith("(49 similar lines suppressed)")
    finally:
        selector.removeHandler(handler)
