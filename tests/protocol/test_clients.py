"""The reference enqueuers (clients/) end to end: built from their project files, checked against
the vectors by their own unit tests, then a task each sends runs on a real ktasks worker with the
right arguments, and a malformed envelope each sends is dead-lettered with the reason.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from kafka.partitioner.default import murmur2

from ktasks.deadletter import StoredDeadLetter
from ktasks.message import decode
from tests.fixtures.worker import FAST, Project
from tests.helpers import wait_until
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


@pytest.fixture(scope="module")
def shared(kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Project]:
    """One app and one running worker for every client (a worker takes seconds to join its group)."""
    tag = uuid.uuid4().hex[:8]
    p = Project(tmp_path_factory.mktemp("clients"), f"proj-clients-{tag}", kafka_bootstrap, f"tasks-clients-{tag}",
                f"group-clients-{tag}", TASK_SOURCE, dict(FAST, partitions=3))
    worker = p.worker("-c", "2")
    try:
        worker.wait_assigned()
        yield p
        assert worker.stop() == 0, worker.log()[-4000:]
    finally:
        p.cleanup()


def test_the_client_builds_and_passes_its_vector_tests(client: clients.Client) -> None:
    # The fixture built it and ran its unit tests (or found them passed for these exact inputs).
    assert client.stamp.read_text().strip() == clients._digest(client)


def test_a_task_from_the_client_runs_and_a_malformed_one_is_dead_lettered(
        client: clients.Client, shared: Project, read_records: Any) -> None:
    p = shared
    ikey = f"refund-{client.name}"
    base = ("--bootstrap", p.bootstrap, "--topic", p.topic)
    [sent] = clients.run_cli(client, "enqueue", *base, "--task", f"{p.module}.echo", "--args", json.dumps(ARGS),
                             "--kwargs", json.dumps(KWARGS), "--key", "customer-7", "--idempotency-key", ikey,
                             "--header", "x-source=checkout")
    malformed = [v for v in vectors.invalid() if v.name in MALFORMED]
    assert len(malformed) == len(MALFORMED) and all(v.value is not None for v in malformed)
    raw = [arg for v in malformed for arg in ("--value-hex", (v.value or b"").hex())]
    places = clients.run_cli(client, "raw", *base, *raw, "--header", "x-source=checkout")
    bad = {(where["partition"], where["offset"]): v for where, v in zip(places, malformed, strict=True)}

    ran = wait_until(lambda: [e for e in p.effects("ran") if e["ikey"] == ikey], 60,
                     message=f"the task from {client.name} never ran")
    assert len(ran) == 1
    effect = ran[0]
    assert effect["args"] == repr(to_python(ARGS))
    assert effect["kwargs"] == repr(sorted(to_python(KWARGS).items()))
    assert (effect["id"], effect["attempt"]) == (sent["id"], 0)
    assert re.fullmatch(r"[0-9a-f]{32}", sent["id"])
    # The key chose the partition as Kafka's Java client would.
    assert effect["partition"] == sent["partition"] == (murmur2(b"customer-7") & 0x7FFFFFFF) % 3

    record = next(r for r in read_records(p.topic, min_count=1)
                  if (r.partition, r.offset) == (sent["partition"], sent["offset"]))
    assert record.key == b"customer-7"
    assert [(k, v.decode()) for k, v in record.headers] == [
        ("ktasks-task", f"{p.module}.echo"), ("ktasks-id", sent["id"]), ("ktasks-v", "1"), ("x-source", "checkout")]
    assert decode(record.value).task == f"{p.module}.echo"

    def letters() -> list[StoredDeadLetter]:
        found = [StoredDeadLetter.from_record(r) for r in read_records(p.topic + ".DLT")]
        return [d for d in found if (d.original_partition, d.original_offset) in bad]

    mine = wait_until(lambda: len(letters()) >= len(MALFORMED) and letters(), 60,
                      message=f"the malformed records from {client.name} were not all dead-lettered")
    assert len(mine) == len(MALFORMED), "each dead-lettered once"
    for letter in mine:
        vector = bad[letter.original_partition, letter.original_offset]
        assert letter.reason == "undecodable", vector.name
        assert letter.value == vector.value
        assert letter.exc_message and re.search(vector.pattern(), letter.exc_message), (vector.name,
                                                                                         letter.exc_message)
