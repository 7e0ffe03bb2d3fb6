"""Eager mode runs a task as a worker would: retries with real attempts, dead-letter decisions, the ledger."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest

from ktasks import App, EagerResult, Middleware, Retry
from ktasks.testing import eager


@pytest.fixture
def app(closed_port: int) -> Any:
    a = App("eager-rules", bootstrap_servers=f"127.0.0.1:{closed_port}", eager=True, retry_jitter=False)
    yield a
    a.close(timeout_s=1)


def test_the_exception_is_kept_on_the_result_and_get_raises_it(app: App) -> None:
    calls: list[int] = []

    @app.task(bind=True)
    def broken(ctx: Any) -> None:
        calls.append(ctx.attempt)
        raise ValueError(f"attempt {ctx.attempt}")

    result = broken.delay()  # does not raise
    assert isinstance(result, EagerResult)
    assert calls == [0, 1, 2, 3], "the default policy: 3 retries, with real ctx.attempt values"
    assert result.attempts == 4 and result.retries == 3
    assert result.retry_delays_s == [1.0, 2.0, 4.0], "the worker's backoff (1 s, doubled), not waited for"
    assert result.dead_letter_reason == "retries-exhausted" and not result.successful()
    assert str(result.exception) == "attempt 3"
    result.wait_sent()  # like a real send: nothing to raise
    with pytest.raises(ValueError, match="attempt 3"):
        result.get()


def test_a_retry_that_succeeds_and_ctx_retry_countdown(app: App) -> None:
    @app.task(bind=True, max_retries=5)
    def flaky(ctx: Any, n: int) -> str:
        if ctx.attempt < 2:
            raise ctx.retry(countdown_s=7, exc=ConnectionError("down"))
        return f"{n} on attempt {ctx.attempt}"

    result = flaky.delay(3)
    assert result.get() == "3 on attempt 2"
    assert result.retry_delays_s == [7, 7] and result.dead_letter_reason is None and result.successful()


def test_not_retriable_and_propagation(app: App) -> None:
    @app.task(retry_for=(ConnectionError,))
    def picky() -> None:
        raise KeyError("no")

    result = picky.delay()
    assert (result.attempts, result.dead_letter_reason) == (1, "not-retriable")
    with eager(app, propagates=True):
        with pytest.raises(KeyError):
            picky.delay()
    assert app.settings.eager_propagates is False, "restored after the block"


def test_an_idempotency_key_runs_once(app: App) -> None:
    runs: list[int] = []

    @app.task
    def charge(cents: int) -> str:
        runs.append(cents)
        return f"charged {cents}"

    first = charge.apply_async(args=(100,), idempotency_key="order-1")
    again = charge.apply_async(args=(100,), idempotency_key="order-1")
    other = charge.apply_async(args=(100,), idempotency_key="order-2")
    assert runs == [100, 100], "order-1 ran once, order-2 once"
    assert not first.skipped and again.skipped and not other.skipped
    assert again.get() == "charged 100", "a skipped run returns the recorded result"
    app.eager_ledger.reset()
    charge.apply_async(args=(100,), idempotency_key="order-1")
    assert len(runs) == 3, "a reset ledger forgets"
    with eager(app, ledger=False):
        charge.apply_async(args=(1,), idempotency_key="k")
        charge.apply_async(args=(1,), idempotency_key="k")
    assert runs[-2:] == [1, 1], "without the ledger, duplicates run"


def test_a_failed_key_runs_again(app: App) -> None:
    outcomes = iter([ValueError("first call fails"), None])

    @app.task(max_retries=0)
    def once() -> str:
        exc = next(outcomes)
        if exc:
            raise exc
        return "ok"

    assert once.apply_async(idempotency_key="k").dead_letter_reason == "retries-exhausted"  # as a worker says
    assert once.apply_async(idempotency_key="k").get() == "ok"


def test_middleware_sees_retries_and_the_dead_letter(app: App) -> None:
    seen: list[tuple[str, Any]] = []

    class Spy(Middleware):
        def on_retry(self, message: Any, delay_s: float, exc: Any) -> None:
            seen.append(("retry", message.attempt))

        def on_dead_letter(self, message: Any, reason: str) -> None:
            seen.append(("dead", reason))

    app.add_middleware(Spy())

    @app.task(max_retries=1)
    def bad() -> None:
        raise Retry()

    bad.delay()
    assert seen == [("retry", 1), ("dead", "retries-exhausted")]


def test_context_manager_turns_eager_on_and_off(closed_port: int) -> None:
    app = App("eager-cm", bootstrap_servers=f"127.0.0.1:{closed_port}")

    @app.task
    def double(x: int) -> int:
        return 2 * x

    with eager(app) as same:
        assert same is app and double.delay(4).get() == 8
    assert app.settings.eager is False
    app.close(timeout_s=1)


def test_importing_ktasks_shows_no_deprecation_warnings() -> None:
    code = "import ktasks, ktasks.worker, ktasks.cli, ktasks.inspect, ktasks.testing"
    out = subprocess.run([sys.executable, "-W", "error::DeprecationWarning", "-c", code], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr[-2000:]
    out = subprocess.run([sys.executable, "-W", "always", "-c", "import ktasks"], capture_output=True, text=True,
                         timeout=60)
    assert "DeprecationWarning" not in out.stderr
