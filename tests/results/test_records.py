"""Result records, partitioning and the middleware's hook detection, without a broker."""

from __future__ import annotations

import datetime as dt
import time
from decimal import Decimal

import pytest

from ktasks import App, DecodeError, Middleware, ResultExpired, TaskFailed
from ktasks.message import pack
from ktasks.results.records import ResultRecord, failure_of, partition_for, success_of


def test_a_result_round_trips_with_the_message_codec_types() -> None:
    app = App("records")
    value = {"total": Decimal("6.30"), "at": dt.datetime(2026, 1, 2, tzinfo=dt.timezone.utc), "n": [1, 2]}
    record = success_of(app, "id1", "shop.total", value)
    back = ResultRecord.decode(record.encode())
    assert back == record and back.outcome() == value


def test_a_failure_raises_task_failed_with_the_remote_details() -> None:
    record = failure_of(App("records"), "id2", "shop.price", "KeyError", "'durian'", "Traceback ...",
                        "not-retriable")
    with pytest.raises(TaskFailed) as caught:
        ResultRecord.decode(record.encode()).outcome()
    exc = caught.value
    assert (exc.remote_type, exc.remote_message, exc.remote_traceback) == ("KeyError", "'durian'",
                                                                           "Traceback ...")
    assert (exc.task_name, exc.task_id, exc.reason) == ("shop.price", "id2", "not-retriable")


def test_an_unencodable_value_is_stored_as_a_failure_that_says_so() -> None:
    record = success_of(App("records"), "id3", "t", object())
    with pytest.raises(TaskFailed, match="return value cannot be encoded"):
        ResultRecord.decode(record.encode()).outcome()


def test_an_expired_result_raises_result_expired() -> None:
    record = ResultRecord("id4", "t", True, 1, None, None, time.time() - 10, time.time() - 1)
    with pytest.raises(ResultExpired, match="result_expires_s"):
        record.outcome()


@pytest.mark.parametrize("data", [None, b"\xc1", pack([1]), pack({"v": 2}), pack({"v": 1, "id": 5})])
def test_garbage_is_not_a_result(data: bytes | None) -> None:
    with pytest.raises(DecodeError):
        ResultRecord.decode(data)


def test_partitioning_is_kafkas_default_partitioner() -> None:
    from types import SimpleNamespace

    from kafka.partitioner.default import DefaultPartitioner

    # The metadata kafka-python's partitioner asks for: a topic of 12 partitions, all available.
    cluster = SimpleNamespace(topics=lambda: {"t"}, partitions_for_topic=lambda t: set(range(12)),
                              available_partitions_for_topic=lambda t: set(range(12)))
    for key in ("a", "0f3c2a9e4b7d4c1a8e5f6a7b8c9d0e1f", "chord-7"):
        expected = DefaultPartitioner().partition("t", key, key.encode(), None, None, cluster)
        assert partition_for(key, 12) == expected


def test_the_stack_knows_which_hooks_are_overridden() -> None:
    from ktasks.results.middleware import ResultsMiddleware

    app = App("hooks")
    assert not any(isinstance(m, ResultsMiddleware) for m in app.middleware.hooked("intake")), \
        "the built-in results middleware has no intake hook"
    assert any(isinstance(m, ResultsMiddleware) for m in app.middleware.hooked("after_task"))

    class Gate(Middleware):
        def intake(self, record):  # type: ignore[no-untyped-def]
            return None

    gate = Gate()
    app.add_middleware(gate)
    assert gate in app.middleware.hooked("intake")
