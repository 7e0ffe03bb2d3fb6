"""App: naming, the registry, and the enqueue path against the real broker."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from ktasks import (
    App,
    BrokerUnavailable,
    ConfigurationError,
    EagerResult,
    EncodeError,
    MessageTooLarge,
    Middleware,
    SendHandle,
    TaskNotRegistered,
)
from ktasks.message import Message, decode, header
from tests.helpers import create_topic


def test_names_of_topics_and_group():
    app = App("billing", retry_tiers_ms=[1000, 60000])
    assert app.default_topic == "billing.tasks"
    assert app.group_id == "billing"
    assert app.client_id == "ktasks-billing"
    assert app.dead_letter_topic("billing.tasks") == "billing.tasks.DLT"
    assert app.retry_topics("billing.tasks") == ["billing.tasks.retry-1000ms", "billing.tasks.retry-60000ms"]
    assert app.task_topics() == ["billing.tasks"]
    custom = App("x", default_topic="jobs", group_id="workers", dead_letter_suffix="-dlq")
    assert (custom.default_topic, custom.group_id, custom.dead_letter_topic("jobs")) == ("jobs", "workers", "jobs-dlq")
    with pytest.raises(ConfigurationError):
        App("")


def test_registry():
    app = App("reg")

    @app.task
    def plain(x: int) -> int:
        return x

    @app.task(name="custom.name", topic="other")
    def named() -> None: ...

    assert plain.name == f"{__name__}.test_registry.<locals>.plain"
    assert app.get_task("custom.name") is named and app.tasks[plain.name] is plain
    assert app.task_topics() == ["other", "reg.tasks"]
    with pytest.raises(TaskNotRegistered, match="'nope'"):
        app.get_task("nope")


def test_send_task_by_name_for_a_task_defined_elsewhere(app, read_records):
    handle = app.send_task("elsewhere.task", args=[1, "a"], kwargs={"b": 2}, key="k")
    assert isinstance(handle, SendHandle)
    handle.wait_sent()
    [record] = read_records(app.default_topic, min_count=1)
    message = decode(record.value)
    assert (message.task, message.args, message.kwargs) == ("elsewhere.task", [1, "a"], {"b": 2})
    assert record.key == b"k" and header(record.headers, "ktasks-task") == "elsewhere.task"


def test_unencodable_argument_raises_and_the_end_offset_does_not_move(app, topic_end_offsets, read_records):
    @app.task
    def job(*args: Any, **kwargs: Any) -> None: ...

    # Before the topic even exists: nothing is created, nothing sent.
    with pytest.raises(TypeError, match="positional argument 1"):
        job.delay(1, object())
    assert topic_end_offsets(job.topic) == {}

    job.delay("fine").wait_sent()
    before = topic_end_offsets(job.topic)
    assert sum(before.values()) == 1
    with pytest.raises(TypeError, match="positional argument 0"):
        job.delay({1, 2})
    with pytest.raises(TypeError, match="keyword argument 'when'"):
        job.delay(when=object())
    with pytest.raises(EncodeError, match="keyword 3"):
        job.apply_async(kwargs={3: "x"})
    with pytest.raises(EncodeError, match="key must be str or bytes"):
        job.apply_async(key=42)  # type: ignore[arg-type]
    app.flush()
    assert topic_end_offsets(job.topic) == before
    assert len(read_records(job.topic)) == 1


def test_message_over_max_message_bytes_raises_and_nothing_is_sent(make_app, topic_end_offsets):
    app = make_app(max_message_bytes=20_000)

    @app.task
    def upload(data: bytes) -> None: ...

    upload.delay(b"x" * 10_000).wait_sent()
    before = topic_end_offsets(upload.topic)
    with pytest.raises(MessageTooLarge, match="max_message_bytes=20000; nothing was sent"):
        upload.delay(b"x" * 20_000)
    with pytest.raises(MessageTooLarge):
        upload.apply_async(args=[b""], headers={"big": b"h" * 25_000})
    app.flush()
    assert topic_end_offsets(upload.topic) == before


def test_message_over_the_default_limit_is_refused_before_sending(app, topic_end_offsets):
    @app.task
    def upload(data: bytes) -> None: ...

    with pytest.raises(MessageTooLarge):
        upload.delay(b"x" * (1024 * 1024))
    assert topic_end_offsets(upload.topic) == {}


def test_topic_is_created_on_first_use_with_the_configured_partitions(make_app, kafka_admin, unique):
    app = make_app(partitions=4)

    @app.task
    def a() -> None: ...

    @app.task(topic=unique("wide"), partitions=5)
    def b() -> None: ...

    a.delay().wait_sent()
    b.delay().wait_sent()
    counts = {d["name"]: len(d["partitions"]) for d in kafka_admin.describe_topics([a.topic, b.topic])}
    assert counts == {a.topic: 4, b.topic: 5}


def test_existing_topic_with_fewer_partitions_is_reported_and_left_alone(make_app, kafka_admin, unique, caplog):
    topic = unique("narrow")
    create_topic(kafka_admin, topic, partitions=1)
    app = make_app(default_topic=topic, partitions=3)

    @app.task
    def job() -> None: ...

    with caplog.at_level(logging.WARNING, logger="ktasks"):
        sent = job.delay().wait_sent()
    assert sent.partition == 0
    assert "has 1 partitions, fewer than the configured 3" in caplog.text
    [described] = kafka_admin.describe_topics([topic])
    assert len(described["partitions"]) == 1


def test_auto_create_off_sends_to_an_existing_topic(make_app, kafka_admin, unique):
    topic = unique("precreated")
    create_topic(kafka_admin, topic, partitions=2)
    app = make_app(default_topic=topic, auto_create_topics=False)

    @app.task
    def job() -> None: ...

    assert job.delay().wait_sent().topic == topic


def test_eager_mode_runs_inline_without_a_broker(closed_port):
    app = App("eager", bootstrap_servers=f"127.0.0.1:{closed_port}", eager=True)
    calls: list[tuple[Any, ...]] = []

    @app.task
    def add(a: int, b: int, *, note: str = "") -> int:
        calls.append((a, b, note))
        return a + b

    result = add.delay(2, 3, note="n")
    assert isinstance(result, EagerResult) and len(result.id) == 32
    assert calls == [(2, 3, "n")]  # ran at call time
    assert result.get() == 5 and result.wait_sent() is None
    assert add.apply_async(args=(1, 1), task_id="fixed").id == "fixed"


def test_eager_mode_from_the_environment(monkeypatch, closed_port):
    monkeypatch.setenv("KTASKS_EAGER", "1")
    app = App("eager-env", bootstrap_servers=f"127.0.0.1:{closed_port}")
    assert app.settings.eager is True

    @app.task
    def double(x: int) -> int:
        return 2 * x

    assert double.delay(21).get() == 42


def test_eager_mode_rejects_what_production_would(closed_port):
    app = App("eager-strict", bootstrap_servers=f"127.0.0.1:{closed_port}", eager=True, max_message_bytes=1000)
    calls: list[Any] = []

    @app.task
    def job(x: Any) -> None:
        calls.append(x)

    with pytest.raises(TypeError, match="positional argument 0"):
        job.delay(object())
    with pytest.raises(MessageTooLarge):
        job.delay("x" * 2000)
    with pytest.raises(TaskNotRegistered):
        app.send_task("unknown.task")
    assert calls == []


def test_eager_mode_passes_arguments_through_the_codec_and_raises_task_errors(closed_port):
    app = App("eager-codec", bootstrap_servers=f"127.0.0.1:{closed_port}", eager=True, eager_propagates=True,
              max_retries=0)
    seen: list[Any] = []

    @app.task(bind=True)
    def job(ctx: Any, items: Any) -> None:
        seen.append((ctx.id, ctx.attempt, items))
        if items == ["boom"]:
            raise ValueError("boom")

    handle = job.delay((1, 2))
    assert seen == [(handle.id, 0, [1, 2])]  # the tuple came back as a list, as from a worker
    with pytest.raises(ValueError, match="boom"):
        job.delay(("boom",))


@pytest.mark.timeout(60)  # a hang guard only: no timing is asserted
def test_down_broker_fails_within_send_timeout_naming_the_address(closed_port):
    address = f"127.0.0.1:{closed_port}"
    for auto_create in (True, False):  # through the admin client, then through the producer
        app = App("down", bootstrap_servers=address, send_timeout_ms=2000, auto_create_topics=auto_create)

        @app.task
        def job() -> None: ...

        with pytest.raises(BrokerUnavailable) as info:
            job.delay()
        assert address in str(info.value) and "2000 ms" in str(info.value)
        assert info.value.retriable
        app.close(timeout_s=1)


def test_middleware_sees_enqueues_and_can_veto_them(app, read_records):
    events: list[tuple[str, str]] = []

    class Recorder(Middleware):
        def before_enqueue(self, message: Message, topic: str) -> None:
            if message.kwargs.get("veto"):
                raise PermissionError("vetoed")
            events.append(("before", message.id))

        def after_enqueue(self, message: Message, topic: str) -> None:
            events.append(("after", message.id))

    app.add_middleware(Recorder())

    @app.task
    def job(veto: bool = False) -> None: ...

    handle = job.delay()
    with pytest.raises(PermissionError):
        job.delay(veto=True)
    handle.wait_sent()
    assert events == [("before", handle.id), ("after", handle.id)]
    assert len(read_records(job.topic, min_count=1)) == 1


def test_close_flushes_what_was_enqueued(make_app, read_records):
    app = make_app(linger_ms=1000)

    @app.task
    def job(i: int) -> None: ...

    ids = [job.delay(i).id for i in range(50)]
    app.close()
    records = read_records(job.topic, min_count=50)
    assert sorted(decode(r.value).id for r in records) == sorted(ids)
