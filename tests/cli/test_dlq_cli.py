"""``ktasks dlq list / show / replay / purge`` against the real broker, through click's CliRunner."""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from ktasks import App
from ktasks.cli.dlq import dlq
from ktasks.deadletter import (
    H_EXC_STACKTRACE,
    H_FORCE,
    H_REPLAY,
    DeadLetter,
    exception_info,
    publish,
)
from ktasks.message import Message, encode, header, headers_of
from tests.fixtures.app import read_topic
from tests.helpers import UniqueNames, create_topic

TIMEOUT_S = 20.0
SPEC = "dlq_app:app"


@dataclass
class Env:
    """One test's app (as the CLI loads it) and a publisher app with the same settings."""

    name: str
    topic: str
    dlt: str
    bootstrap: str
    app: App

    @property
    def replays(self) -> str:
        """Where replays of the task topic go: its first retry tier (see ktasks.headers)."""
        return self.app.retry_topic(self.topic, min(self.app.settings.retry_tiers_ms))


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, kafka_bootstrap: str, kafka_admin: Any, unique: UniqueNames,
        make_app: Callable[..., App]) -> Iterator[Env]:
    topic = unique("dlqcli")
    name = unique("dlqapp")
    create_topic(kafka_admin, topic, partitions=3)
    monkeypatch.setenv("KTASKS_BOOTSTRAP_SERVERS", kafka_bootstrap)
    monkeypatch.setenv("DLQ_TEST_APP", name)
    monkeypatch.setenv("DLQ_TEST_TOPIC", topic)
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    sys.modules.pop("dlq_app", None)  # the CLI imports it afresh with this test's names
    try:
        yield Env(name, topic, f"{topic}.DLT", kafka_bootstrap, make_app(name, default_topic=topic))
    finally:
        sys.modules.pop("dlq_app", None)


def run(*args: str, input: str | None = None) -> Result:
    return CliRunner().invoke(dlq, list(args), input=input, catch_exceptions=False)


def _stack(marker: str) -> str:
    try:
        raise ValueError(f"cannot add: {marker}")
    except ValueError as exc:
        return exception_info(exc)[2]


def dead_letter(env: Env, args: list[Any] | None = None, *, partition: int = 1, task_id: str | None = None,
                reason: str = "retries-exhausted", value: bytes | None = None,
                error: str = "cannot add") -> Message:
    """Publish a dead letter of ``dlq_test.add`` (or of raw ``value``) and wait for the ack."""
    message = Message(task="dlq_test.add", args=args if args is not None else [2, 3],
                      kwargs={"note": "hi"}, id=task_id or uuid.uuid4().hex)
    dl = DeadLetter(
        value=encode(message) if value is None else value, key=b"key-" + message.id.encode(),
        headers=headers_of(message) if value is None else [], topic=env.topic, partition=partition,
        offset=7, timestamp_ms=int(time.time() * 1000), origin_topic=env.topic, reason=reason,
        exc_type="ValueError", exc_message=error, stacktrace=_stack(message.id), attempts=3, group=env.name,
    )
    publish(env.app, dl).get(timeout=TIMEOUT_S)
    return message


def test_dlq_is_a_ktasks_command() -> None:
    from ktasks.cli import cli

    result = CliRunner().invoke(cli, ["dlq", "--help"])
    assert result.exit_code == 0, result.output
    for command in ("list", "show", "replay", "purge"):
        assert command in result.output


def test_list_shows_a_table_of_dead_letters(env: Env) -> None:
    result = run("list", "-A", SPEC)
    assert result.exit_code == 0, result.output
    assert "no dead letters" in result.output  # the topic does not even exist yet

    first = dead_letter(env, partition=1, error="first failure")
    second = dead_letter(env, partition=2, reason="not-retriable", error="second failure")
    result = run("list", "-A", SPEC)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["TIME", "TASK", "ID", "REASON", "ERROR", "ATTEMPTS", "PARTITION/OFFSET"]
    row1 = next(line for line in lines if first.id in line)
    row2 = next(line for line in lines if second.id in line)
    assert lines.index(row1) < lines.index(row2)  # oldest first
    for row, reason, error, where in ((row1, "retries-exhausted", "ValueError: first failure", "1/0"),
                                      (row2, "not-retriable", "ValueError: second failure", "2/0")):
        assert "dlq_test.add" in row and reason in row and error in row
        assert row.split()[-2:] == ["3", where]
    assert "2 of 2 dead letter(s)" in result.output

    # --limit shows the newest; --topic takes the task topic or the DLT itself.
    result = run("list", "-A", SPEC, "--limit", "1", "--topic", env.dlt)
    assert result.exit_code == 0, result.output
    assert second.id in result.output and first.id not in result.output
    assert "1 of 2" in result.output


def test_show_prints_every_header_the_envelope_and_the_full_stack_trace(env: Env) -> None:
    message = dead_letter(env, args=[20, 22])
    result = run("show", message.id, "-A", SPEC)
    assert result.exit_code == 0, result.output
    out = result.output
    for name in ("ktasks-task", "ktasks-id", "kafka_dlt-original-topic", "kafka_dlt-original-partition",
                 "kafka_dlt-original-offset", "kafka_dlt-original-timestamp",
                 "kafka_dlt-original-consumer-group", "kafka_dlt-exception-fqcn",
                 "kafka_dlt-exception-message", H_EXC_STACKTRACE, "ktasks-dlt-reason", "ktasks-dlt-attempts",
                 "ktasks-dlt-host", "ktasks-dlt-time", "ktasks-origin-topic"):
        assert f"{name}: " in out, name
    assert "kafka_dlt-original-partition: 1" in out and "kafka_dlt-original-offset: 7" in out
    assert f"kafka_dlt-original-topic: {env.topic}" in out
    assert "args: [20, 22]" in out and "kwargs: {'note': 'hi'}" in out
    assert f"replays to: {env.topic}" in out
    # The whole stack trace, down to the exception line.
    assert "Traceback (most recent call last):" in out and "in _stack" in out
    assert f"ValueError: cannot add: {message.id}" in out

    missing = run("show", "no-such-id", "-A", SPEC)
    assert missing.exit_code == 1 and "no dead letter with id 'no-such-id'" in missing.output


def test_replay_puts_the_original_back_for_its_topic(env: Env) -> None:
    message = dead_letter(env)
    other = dead_letter(env)
    result = run("replay", "--id", message.id, "-A", SPEC)
    assert result.exit_code == 0, result.output
    assert f"replayed {message.id} (dlq_test.add)" in result.output
    assert "replayed 1 dead letter(s)" in result.output and "ktasks dlq purge" in result.output

    [record] = read_topic(env.bootstrap, env.replays, 1)
    assert record.value == encode(message) and record.key == b"key-" + message.id.encode()
    assert header(record.headers, H_REPLAY) == "1" and header(record.headers, H_FORCE) is None
    assert header(record.headers, "ktasks-id") == message.id
    assert not [k for k, _ in record.headers if k.startswith(("kafka_dlt-", "ktasks-dlt-"))]
    assert other.id not in result.output

    # --force marks it so the worker runs it even if the ledger recorded a success.
    result = run("replay", "--id", message.id, "--force", "-A", SPEC)
    assert result.exit_code == 0, result.output
    records = read_topic(env.bootstrap, env.replays, 2)
    forced = [r for r in records if header(r.headers, H_FORCE) == "1"]
    assert len(forced) == 1 and forced[0].value == encode(message)
    assert header(forced[0].headers, H_REPLAY) == "1"

    # The dead letters stay until purged.
    assert "2 of 2" in run("list", "-A", SPEC).output


def test_replay_skips_undecodable_values_unless_forced(env: Env) -> None:
    dead_letter(env, value=b"\xc1 not msgpack", reason="undecodable", partition=0)
    good = dead_letter(env, partition=2)
    result = run("replay", "--all", "-A", SPEC)
    assert result.exit_code == 0, result.output
    assert f"skipped {env.dlt}[0]@0: value does not decode" in result.output
    assert "replayed 1 dead letter(s), skipped 1" in result.output
    [record] = read_topic(env.bootstrap, env.replays, 1)
    assert record.value == encode(good)

    result = run("replay", "--all", "--force", "-A", SPEC)
    assert result.exit_code == 0, result.output
    assert "replayed 2 dead letter(s)" in result.output
    values = [r.value for r in read_topic(env.bootstrap, env.replays, 3)]
    assert values.count(b"\xc1 not msgpack") == 1


def test_replay_of_a_repeated_id_sends_only_its_newest_dead_letter(env: Env) -> None:
    task_id = uuid.uuid4().hex
    dead_letter(env, args=[1, 1], task_id=task_id)
    newest = dead_letter(env, args=[2, 2], task_id=task_id)
    result = run("replay", "--id", task_id, "-A", SPEC)
    assert result.exit_code == 0, result.output
    assert "1 older dead letter(s)" in result.output and "replayed 1 dead letter(s)" in result.output
    [record] = read_topic(env.bootstrap, env.replays, 1)
    assert record.value == encode(newest)


def test_replay_needs_id_or_all_and_reports_unknown_ids(env: Env) -> None:
    assert run("replay", "-A", SPEC).exit_code == 2
    assert run("replay", "--all", "--id", "x", "-A", SPEC).exit_code == 2
    dead_letter(env)
    result = run("replay", "--id", "nope", "-A", SPEC)
    assert result.exit_code == 1 and "no dead letter with id 'nope'" in result.output


def test_purge_asks_then_empties_the_dead_letter_topic(env: Env) -> None:
    assert "nothing to purge" in run("purge", "-A", SPEC).output
    for partition in (0, 1, 1):
        dead_letter(env, partition=partition)

    declined = run("purge", "-A", SPEC, input="n\n")
    assert declined.exit_code == 1 and "Delete 3 dead letter(s)" in declined.output
    assert "3 of 3" in run("list", "-A", SPEC).output

    result = run("purge", "-A", SPEC, "--yes")
    assert result.exit_code == 0, result.output
    assert f"purged 3 dead letter(s) from {env.dlt}" in result.output
    assert "no dead letters" in run("list", "-A", SPEC).output

    # What arrives afterwards is listed again.
    late = dead_letter(env)
    assert late.id in run("list", "-A", SPEC).output
