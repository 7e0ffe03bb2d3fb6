"""The reference enqueuers (clients/) end to end: built from their project files, checked against
the vectors by their own unit tests, then a task each sends runs on a real ktasks worker with the
right arguments, and a malformed envelope each sends is dead-lettered with the reason.
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from ktasks.deadletter import StoredDeadLetter
from ktasks.message import decode
from tests.fixtures.worker import wait_effects
from tests.protocol import clients, vectors
from tests.protocol.typed import to_python

pytestmark = pytest.mark.slow

TASK_SOURCE = """
    @app.task(bind=True)
    def echo(ctx, *args, **kwargs):
        effect("ran", args=repr(list(args)), kwargs=repr(sorted(kwargs.items())), id=ctx.id,
               ikey=ctx.idempotency_key, attempt=ctx.attempt, partition=ctx.partition)
"""

#: One of each kind of argument the wire format carries.
ARGS = [42, -7, {"$int": "18446744073709551615"}, {"$float": 3.25}, True, None, "zoë ✓",
        {"$bytes": "00ff10"}, [1, [2, []]], {"a": {"b": None}},
        {"$datetime": "2024-05-01T12:30:45.123456+02:00"}, {"$date": "2024-05-01"},
        {"$decimal": "19.99"}, {"$uuid": "12345678-1234-4678-9234-567812345678"},
        {"$naive_datetime": "2024-05-01T08:00:00"}]
KWARGS = {"cents": 1999, "note": "refund"}
#: Invalid vectors each client sends raw; each must be dead-lettered for its own reason.
MALFORMED = ("02-garbage", "06-array", "10-missing-task", "14-args-is-map")


@pytest.fixture(scope="module", params=[c.name for c in clients.CLIENT_LIST])
def client(request: pytest.FixtureRequest) -> clients.Client:
    built = clients.CLIENTS_BY_NAME[request.param]
    clients.build(built)
    return built


def test_the_client_builds_and_passes_its_vector_tests(client: clients.Client) -> None:
    # The fixture built it and ran its unit tests (or found them passed for these exact inputs).
    assert client.stamp.read_text().strip() == clients._digest(client)


def test_a_task_from_the_client_runs_and_a_malformed_one_is_dead_lettered(
        client: clients.Client, project: Any, read_records: Any) -> None:
    p = project(TASK_SOURCE, partitions=3)
    worker = p.worker("-c", "2")
    worker.wait_assigned()
    base = ("--bootstrap", p.bootstrap, "--topic", p.topic)
    [sent] = clients.run_cli(client, "enqueue", *base, "--task", f"{p.module}.echo", "--args", json.dumps(ARGS),
                             "--kwargs", json.dumps(KWARGS), "--key", "customer-7", "--idempotency-key",
                             f"refund-{client.name}", "--header", "x-source=checkout")
    malformed = [v for v in vectors.invalid() if v.name in MALFORMED]
    assert len(malformed) == len(MALFORMED) and all(v.value is not None for v in malformed)
    raw = [arg for v in malformed for arg in ("--value-hex", (v.value or b"").hex())]
    places = clients.run_cli(client, "raw", *base, *raw, "--header", "x-source=checkout")
    bad = {(where["partition"], where["offset"]): v for where, v in zip(places, malformed, strict=True)}

    ran = wait_effects(p, "ran", 1)
    assert len(ran) == 1
    effect = ran[0]
    assert effect["args"] == repr(to_python(ARGS))
    assert effect["kwargs"] == repr(sorted(to_python(KWARGS).items()))
    assert (effect["id"], effect["ikey"], effect["attempt"]) == (sent["id"], f"refund-{client.name}", 0)
    assert re.fullmatch(r"[0-9a-f]{32}", sent["id"])
    # The key chose the partition as Kafka's Java client would.
    assert effect["partition"] == sent["partition"] == (murmur2(b"customer-7") & 0x7FFFFFFF) % 3

    record = next(r for r in read_records(p.topic, min_count=1 + len(MALFORMED))
                  if (r.partition, r.offset) == (sent["partition"], sent["offset"]))
    assert record.key == b"customer-7"
    assert [(k, v.decode()) for k, v in record.headers] == [
        ("ktasks-task", f"{p.module}.echo"), ("ktasks-id", sent["id"]), ("ktasks-v", "1"), ("x-source", "checkout")]
    assert decode(record.value).task == f"{p.module}.echo"

    letters = [StoredDeadLetter.from_record(r) for r in read_records(p.topic + ".DLT", min_count=len(MALFORMED))]
    assert len(letters) == len(MALFORMED)
    for letter in letters:
        vector = bad[letter.original_partition, letter.original_offset]
        assert letter.reason == "undecodable", vector.name
        assert letter.value == vector.value
        assert letter.exc_message and re.search(vector.pattern(), letter.exc_message), (vector.name,
                                                                                         letter.exc_message)
    assert worker.stop() == 0
