"""The dev broker (``ktasks dev``) against real Kafka: lifecycle, data kept across restarts, errors.

The lifecycle tests share one broker of their own (``own_broker``) on a free
port, apart from the session's broker, because they stop and restart it.
"""

from __future__ import annotations

import os
import shutil
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer

from ktasks.cli import cli
from ktasks.dev import KAFKA_VERSION, DevBroker, free_port
from ktasks.dev.broker import failure_reason
from ktasks.dev.jars import parse_java_major
from ktasks.errors import DevBrokerError
from tests.helpers import UniqueNames, create_topic, wait_until

KTASKS = Path(sys.executable).with_name("ktasks")


def run_cli(*args: str, env: dict[str, str] | None = None) -> Result:
    """``ktasks <args>`` in this process (click's runner), stdout and stderr kept apart."""
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def broker_args(broker: DevBroker) -> list[str]:
    return ["--port", str(broker.port), "--data-dir", str(broker.state_dir)]


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    try:
        for value in values:
            producer.send(topic, key=value, value=value)
        producer.flush(timeout=30)
    finally:
        producer.close()


def consume(bootstrap: str, topic: str, group: str, count: int, timeout_s: float = 30.0) -> list[bytes]:
    """Subscribe as ``group`` and poll until ``count`` records arrived; return their values."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False)
    got: list[bytes] = []
    try:
        def received_all() -> bool:
            for records in consumer.poll(timeout_ms=200).values():
                got.extend(record.value for record in records)
            return len(got) >= count

        wait_until(received_all, timeout_s, interval_s=0, message=f"{count} records from {topic}")
    finally:
        consumer.close()
    return got


# -- against the session's broker ---------------------------------------------------------


def test_produce_consume_round_trip(kafka_bootstrap: str, kafka_admin: Any, unique: UniqueNames) -> None:
    topic = unique("round-trip")
    create_topic(kafka_admin, topic, partitions=2)
    sent = [f"message-{i}".encode() for i in range(20)]
    produce(kafka_bootstrap, topic, sent)
    assert sorted(consume(kafka_bootstrap, topic, unique("group"), len(sent))) == sorted(sent)


def test_unique_names_differ(unique: UniqueNames) -> None:
    first, second = unique("topic"), unique("topic")
    assert first != second
    assert first.startswith("topic-test-unique-names-differ-")
    assert all(c.isalnum() or c in "-_" for c in first)


# -- lifecycle of a broker of our own -------------------------------------------------------


@pytest.fixture(scope="module")
def own_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    """A dev broker started the way a developer starts one: ``ktasks dev up``."""
    broker = DevBroker(port=free_port(), state_dir=tmp_path_factory.mktemp("dev-broker"))
    started = time.monotonic()
    result = run_cli("dev", "up", *broker_args(broker))
    assert result.exit_code == 0, result.output
    assert f"Kafka is up at {broker.bootstrap}" in result.stdout
    assert "starting broker on" in result.stderr and "ready in" in result.stderr
    print(f"own broker up in {time.monotonic() - started:.1f} s")
    try:
        yield broker
    finally:
        broker.down(wipe=True)


def test_up_starts_a_broker_that_answers(own_broker: DevBroker) -> None:
    own_broker.up()
    status = own_broker.status()
    assert status is not None
    assert status.kafka_version == KAFKA_VERSION
    assert (own_broker.data_dir / "meta.properties").exists()
    admin = KafkaAdminClient(bootstrap_servers=own_broker.bootstrap)
    try:
        brokers = admin.describe_cluster()["brokers"]
    finally:
        admin.close()
    assert [b["port"] for b in brokers] == [own_broker.port]


def test_second_up_is_a_noop_that_reports_the_address(own_broker: DevBroker) -> None:
    own_broker.up()
    before = own_broker.status()
    assert before is not None
    assert own_broker.up() is False
    result = run_cli("dev", "up", *broker_args(own_broker))
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"Kafka is already running at {own_broker.bootstrap} (pid {before.pid})"
    assert "starting" not in result.stderr
    assert own_broker.status() == before


def test_status_and_logs(own_broker: DevBroker) -> None:
    own_broker.up()
    status = own_broker.status()
    assert status is not None
    result = run_cli("dev", "status", *broker_args(own_broker))
    assert result.exit_code == 0, result.output
    for expected in (own_broker.bootstrap, str(status.pid), KAFKA_VERSION, str(own_broker.data_dir),
                     str(own_broker.log_path)):
        assert expected in result.stdout

    result = run_cli("dev", "logs", "-n", "5", *broker_args(own_broker))
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == own_broker.read_log(5)
    assert len(result.stdout.splitlines()) == 5
    assert any("Kafka Server started" in line for line in own_broker.read_log())


def test_follow_log_sees_new_lines(own_broker: DevBroker, unique: UniqueNames) -> None:
    own_broker.up()
    deadline = time.monotonic() + 30
    follow = own_broker.follow_log(lines=2, interval_s=0.05, stop=lambda: time.monotonic() > deadline)
    topic = unique("followed")
    admin = KafkaAdminClient(bootstrap_servers=own_broker.bootstrap)
    try:
        create_topic(admin, topic)
    finally:
        admin.close()
    lines = []
    for line in follow:
        lines.append(line)
        if topic in line:
            break
    else:
        pytest.fail(f"topic {topic} never appeared in the followed log")
    assert lines[:2] != [] and len(lines) >= 3


def test_down_keeps_data_and_up_brings_it_back(own_broker: DevBroker, unique: UniqueNames) -> None:
    own_broker.up()
    before = own_broker.status()
    assert before is not None
    topic = unique("kept")
    admin = KafkaAdminClient(bootstrap_servers=own_broker.bootstrap)
    try:
        create_topic(admin, topic)
    finally:
        admin.close()
    produce(own_broker.bootstrap, topic, [b"survives a restart"])

    # Through the installed console script, as a developer would.
    down = subprocess.run([str(KTASKS), "dev", "down", *broker_args(own_broker)], capture_output=True,
                          text=True, timeout=120)
    assert down.returncode == 0, down.stderr
    assert f"Kafka at {own_broker.bootstrap} stopped" in down.stdout
    assert own_broker.status() is None
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", own_broker.port), timeout=1).close()
    status = subprocess.run([str(KTASKS), "dev", "status", *broker_args(own_broker)], capture_output=True,
                            text=True, timeout=60)
    assert status.returncode == 1
    assert "not running" in status.stdout
    assert (own_broker.data_dir / "meta.properties").exists()

    assert own_broker.up() is True
    after = own_broker.status()
    assert after is not None and after.pid != before.pid
    assert after.controller_port == before.controller_port
    assert consume(own_broker.bootstrap, topic, unique("group"), 1) == [b"survives a restart"]


def test_down_wipe_removes_the_state(own_broker: DevBroker) -> None:
    own_broker.up()
    result = run_cli("dev", "down", "--wipe", *broker_args(own_broker))
    assert result.exit_code == 0, result.output
    assert "stopped; data wiped" in result.stdout
    assert not own_broker.state_dir.exists()
    assert own_broker.down() is False  # nothing left to stop
    result = run_cli("dev", "status", *broker_args(own_broker))
    assert result.exit_code == 1
    assert "not running" in result.stdout


# -- error paths ------------------------------------------------------------------------------


def assert_one_line_error(stderr: str, *fragments: str) -> None:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("Error: "), stderr
    for fragment in fragments:
        assert fragment in lines[0]


def test_up_fails_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = DevBroker(port=port, state_dir=tmp_path / "state")
        with pytest.raises(DevBrokerError, match=f"port {port} .*already in use"):
            broker.up()
        result = run_cli("dev", "up", *broker_args(broker))
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, f"port {port}", "already in use")
    assert not broker.pid_path.exists()
    assert broker.status() is None


def test_up_fails_without_java_on_path(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("JAVA_HOME", "KTASKS_JAVA")}
    env["PATH"] = str(tmp_path / "empty-bin")  # no java there (the script's shebang is absolute)
    proc = subprocess.run([str(KTASKS), "dev", "up", "--port", str(free_port()), "--data-dir",
                           str(tmp_path / "state")], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 1, proc.stderr
    assert_one_line_error(proc.stderr, "java not found on PATH", "Java 17")
    assert proc.stdout == ""


def test_up_fails_with_a_missing_or_old_java(tmp_path: Path) -> None:
    args = ["dev", "up", "--port", str(free_port()), "--data-dir", str(tmp_path / "state")]
    result = run_cli(*args, env={"KTASKS_JAVA": str(tmp_path / "no-such-java")})
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "KTASKS_JAVA", "no-such-java")

    old_java = script(tmp_path / "java11", 'echo \'openjdk version "11.0.22" 2024-01-16\' >&2')
    result = run_cli(*args, env={"KTASKS_JAVA": str(old_java)})
    assert result.exit_code == 1
    assert_one_line_error(result.stderr, "is Java 11", "Java 17 or newer")


def test_jar_resolution_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    java = shutil.which("java")
    if java is None:
        pytest.skip("needs java")
    monkeypatch.delenv("KAFKA_HOME", raising=False)
    monkeypatch.setenv("KTASKS_JAVA", java)
    cache = tmp_path / "cache"
    monkeypatch.setenv("KTASKS_CACHE_DIR", str(cache))
    broker = DevBroker(port=free_port(), state_dir=tmp_path / "state")

    monkeypatch.delenv("KTASKS_MVN", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    with pytest.raises(DevBrokerError, match="mvn not found on PATH"):
        broker.up()

    failing_mvn = script(tmp_path / "mvn",  # the shape of mvn 3.8's output, colour resets included
                         r"printf '\033[0m\033[0m[ERROR] Failed to execute goal: Could not resolve "
                         r"dependencies for project x -> [Help 1]\n'",
                         'echo "[ERROR] "', 'echo "[ERROR] To see the full stack trace of the errors"',
                         "exit 1")
    monkeypatch.setenv("KTASKS_MVN", str(failing_mvn))
    with pytest.raises(DevBrokerError) as failure:
        broker.up()
    message = str(failure.value)
    assert f"could not resolve Kafka {KAFKA_VERSION} jars" in message
    assert "mvn exit code 1): Failed to execute goal: Could not resolve dependencies for project x; see" in message
    assert str(cache / f"kafka-{KAFKA_VERSION}.mvn.log") in message
    # Nothing half-done is left to be mistaken for a complete download.
    assert sorted(p.name for p in cache.iterdir()) == [f"kafka-{KAFKA_VERSION}.lock",
                                                       f"kafka-{KAFKA_VERSION}.mvn.log"]

    monkeypatch.setenv("KAFKA_HOME", str(tmp_path / "not-kafka"))
    with pytest.raises(DevBrokerError, match="not an Apache Kafka distribution"):
        broker.up()


def test_broker_that_does_not_answer_in_time_is_stopped(tmp_path: Path) -> None:
    broker = DevBroker(port=free_port(), state_dir=tmp_path / "state")
    try:
        with pytest.raises(DevBrokerError) as failure:
            broker.up(timeout_s=0.01)
        assert "did not come up within 0.01 s" in str(failure.value)
        assert str(broker.log_path) in str(failure.value)
        assert broker.status() is None
        assert not broker.pid_path.exists()
    finally:
        broker.down(wipe=True)


def test_broker_that_exits_while_starting_reports_why(tmp_path: Path) -> None:
    broker = DevBroker(port=free_port(), state_dir=tmp_path / "state")
    broker.data_dir.mkdir(parents=True)
    (broker.data_dir / "meta.properties").write_text("not=a kafka meta file\n")
    try:
        with pytest.raises(DevBrokerError) as failure:
            broker.up(timeout_s=60)
        message = str(failure.value)
        assert "exited with code" in message
        assert "node ID not found" in message
        assert str(broker.log_path) in message
        assert broker.status() is None
    finally:
        broker.down(wipe=True)


# -- pure helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("output", "major"), [
    ('openjdk version "17.0.15" 2025-04-15\nOpenJDK Runtime Environment', 17),
    ('java version "1.8.0_292"', 8),
    ('openjdk version "21-ea" 2023-09-19', 21),
    ('openjdk version "25" 2025-09-16', 25),
    ("no version here", None),
])
def test_parse_java_major(output: str, major: int | None) -> None:
    assert parse_java_major(output) == major


def test_failure_reason_prefers_the_innermost_cause() -> None:
    log = [
        "[2026-01-01 00:00:00,000] INFO starting (kafka.Kafka$)",
        "[2026-01-01 00:00:01,000] ERROR [BrokerServer id=1] Fatal error during broker startup. (kafka.X)",
        "java.lang.RuntimeException: Unable to start acceptor",
        "\tat kafka.network.SocketServer.start(SocketServer.scala:1)",
        "Caused by: org.apache.kafka.common.KafkaException: Socket server failed to bind to 127.0.0.1:1",
        "\t... 12 more",
        "[2026-01-01 00:00:02,000] INFO shutting down (kafka.Kafka$)",
        "java.lang.IllegalStateException: later noise",
    ]
    assert failure_reason(log) == ("org.apache.kafka.common.KafkaException: Socket server failed to bind "
                                   "to 127.0.0.1:1")
    assert failure_reason(["[t] ERROR something broke (kafka.Y)"]) == "something broke"
    assert failure_reason(["Error: Could not find or load main class kafka.Kafka"]) == (
        "Error: Could not find or load main class kafka.Kafka")
    assert failure_reason([]) is None


def script(path: Path, *lines: str) -> Path:
    """An executable shell script at ``path``."""
    path.write_text("#!/bin/sh\n" + "\n".join(lines) + "\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
