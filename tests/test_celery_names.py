"""Celery's option names: one alias table for task and call options; what Kafka cannot honour is refused."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import pytest

from ktasks import App, ConfigurationError, UnsupportedOption
from ktasks.celery_names import ALIASES, UNSUPPORTED
from ktasks.message import Message, decode, encode


@pytest.fixture
def app(closed_port: int) -> Any:
    """An app whose broker cannot be reached: any of these calls that tried to send would fail."""
    a = App("names", bootstrap_servers=f"127.0.0.1:{closed_port}", send_timeout_ms=500)
    yield a
    a.close(timeout_s=1)


def test_task_options_under_celery_names(app: App) -> None:
    @app.task(queue="urgent", time_limit=5, soft_time_limit=4, autoretry_for=(IOError,), retry_backoff=2,
              retry_backoff_max=30, ignore_result=True)
    def t() -> None: ...

    o = t.options
    assert (o.topic, o.time_limit_s, o.soft_time_limit_s, o.retry_for) == ("urgent", 5, 4, (IOError,))
    assert (o.retry_backoff_s, o.retry_backoff_max_s, t.topic) == (2, 30, "urgent")


@pytest.mark.parametrize("option, says", [
    ("priority", "own topic"), ("acks_late", "committed only after"), ("routing_key", "key= picks"),
    ("serializer", "msgpack"), ("reject_on_worker_lost", "WorkerLost"),
])
def test_what_kafka_cannot_honour_is_refused_saying_why_and_what_instead(app: App, option: str,
                                                                        says: str) -> None:
    with pytest.raises(UnsupportedOption, match=f"option '{option}' is not supported: .*{says}"):
        app.task(**{option: True})(lambda: None)

    @app.task(name=f"ok_{option}")
    def t() -> None: ...

    with pytest.raises(UnsupportedOption, match=says):
        t.apply_async(**{option: 1})


def test_ignore_result_true_is_the_default_and_false_is_refused(app: App) -> None:
    with pytest.raises(UnsupportedOption, match="keeps no results"):
        app.task(ignore_result=False)(lambda: None)


def test_one_name_twice_and_unknown_names(app: App) -> None:
    with pytest.raises(ConfigurationError, match="give 'time_limit_s' or 'time_limit', not both"):
        app.task(time_limit=1, time_limit_s=2)(lambda: None)
    with pytest.raises(ConfigurationError, match="unknown option 'countdown'"):
        app.task(countdown=3)(lambda: None)  # a call option, not a task option

    @app.task
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="'countdown_s' given twice"):
        t.apply_async(countdown=1, countdown_s=2)
    with pytest.raises(ConfigurationError, match="unknown option 'bogus'.*docs/celery.md"):
        t.apply_async(bogus=1)
    assert set(ALIASES).isdisjoint(UNSUPPORTED)


def test_eta_and_expires_are_checked_before_anything_is_sent(app: App) -> None:
    @app.task
    def t() -> None: ...

    with pytest.raises(ConfigurationError, match="naive datetime"):
        t.apply_async(eta=dt.datetime.now())
    with pytest.raises(ConfigurationError, match="countdown or eta, not both"):
        t.apply_async(countdown=1, eta=dt.datetime.now(dt.timezone.utc))
    with pytest.raises(ConfigurationError, match="expires is not after the time the task is due"):
        t.apply_async(countdown=60, expires=30)
    with pytest.raises(ConfigurationError, match="expires must be"):
        t.apply_async(expires="soon")


def test_schedule_lands_in_the_envelope(closed_port: int) -> None:
    app = App("names-eager", bootstrap_servers=f"127.0.0.1:{closed_port}", eager=True)

    @app.task(bind=True)
    def seen(ctx: Any) -> tuple[float | None, float | None]:
        return ctx.message.due, ctx.message.expires

    before = time.time()
    due, expires = seen.apply_async(countdown=30, expires=60).get()
    assert before + 30 <= due <= time.time() + 30 and before + 60 <= expires <= time.time() + 60
    at = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    due, expires = seen.apply_async(eta=at, expires=at + dt.timedelta(minutes=5)).get()
    assert due == pytest.approx(at.timestamp()) and expires == pytest.approx(at.timestamp() + 300)
    assert seen.apply_async(eta=at - dt.timedelta(days=1)).get() == (None, None), "a past eta is due now"


def test_expires_round_trips_and_is_left_out_when_unset() -> None:
    m = Message(task="t", expires=1234.5)
    assert decode(encode(m)).expires == 1234.5
    assert b"exp" not in encode(Message(task="t"))
