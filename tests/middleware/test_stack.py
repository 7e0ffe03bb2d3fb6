"""The stack itself, broker-free: who is called for which hook, task options, retry decisions."""

from __future__ import annotations

from typing import Any

import pytest

from ktasks import App, ConfigurationError, Middleware
from ktasks.errors import Retry, WorkerLost
from ktasks.message import Message
from ktasks.middleware import Intake, MiddlewareStack, Skip, default_middleware, retries, timelimits


class Counting(Middleware):
    task_options = {"counted": None}

    def __init__(self) -> None:
        self.seen: list[str] = []

    def check_task_options(self, task_name: str, options: Any) -> None:
        if options.get("counted") not in (None, True, False):
            raise ConfigurationError(f"task {task_name!r}: counted must be a bool")

    def decides_for(self, task: Any) -> bool:
        return bool(task.option("counted"))

    def intake(self, record: Intake) -> Skip | None:
        self.seen.append(record.task.name)
        return Skip(reason="counted")


def _app(*middleware: Middleware) -> App:
    return App("stack-test", bootstrap_servers="localhost:1", middleware=middleware)


def test_hooks_are_called_only_on_middleware_that_implement_them() -> None:
    counting = Counting()
    stack = MiddlewareStack([*default_middleware(), counting])
    assert stack.hooked("intake")[-1] is counting
    assert not stack.has("task_finished"), "no built-in observes every record"
    late = Counting()
    late.task_finished = lambda event: None  # type: ignore[method-assign]
    stack.add(late)
    assert stack.hooked("task_finished") == [late], "an instance attribute counts, and add() resets the cache"


def test_intake_is_asked_only_for_the_tasks_a_middleware_decides_for() -> None:
    counting = Counting()
    app = _app(counting)

    @app.task(counted=True)
    def counted() -> None: ...

    @app.task
    def plain() -> None: ...

    for task in (counted, plain):
        msg = Message(task=task.name)
        decision = app.middleware.decide(Intake(msg, task, "t", 0, 0, None))
        assert (decision is not None) == (task is counted)
    assert counting.seen == [counted.name]


def test_unknown_and_bad_task_options_are_refused_naming_them() -> None:
    app = _app(Counting())
    with pytest.raises(ConfigurationError, match="unknown option 'countd'"):
        app.task(countd=True)(lambda: None)
    with pytest.raises(ConfigurationError, match="counted must be a bool"):
        app.task(counted="yes")(lambda: None)


def test_one_retry_decision_for_child_and_parent_failures() -> None:
    app = _app()

    @app.task(max_retries=1, retry_for=(ValueError,), retry_backoff_s=2.0, retry_jitter=False)
    def flaky() -> None: ...

    assert retries.decide(flaky, ValueError("x"), 0) == retries.RetryDecision(True, 2.0)
    assert retries.decide(flaky, Retry(countdown_s=7.0), 0).delay_s == 7.0
    assert retries.decide(flaky, ValueError("x"), 1).reason == "retries-exhausted"
    assert retries.decide(flaky, KeyError("x"), 0).reason == "not-retriable"
    lost = retries.decide(flaky, WorkerLost("died"), 1, reason="worker-lost")
    assert not lost.retry and lost.reason == "worker-lost"


def test_hard_time_limit_is_passed_only_after_the_limit() -> None:
    app = _app()

    @app.task(time_limit_s=2.0, soft_time_limit_s=1.0)
    def limited() -> None: ...

    assert timelimits.overdue(limited, 1.9) is None
    assert timelimits.overdue(limited, 2.1) == 2.0
    assert timelimits.soft_limit_s(limited) == 1.0
    assert "time_limit_s=2.0" in str(timelimits.exceeded(limited))
