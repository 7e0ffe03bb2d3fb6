"""Eager mode at parity: results, TaskFailed, app.result() and the canvas run inline as a worker runs them."""

from __future__ import annotations

import pytest

from ktasks import App, ResultsDisabled, TaskFailed, chain, chord, group


def make_app(**settings: object) -> App:
    app = App("eager-results", eager=True, **settings)

    @app.task(store_result=True, max_retries=2, retry_backoff_s=0)
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(store_result=True, max_retries=1, retry_backoff_s=0)
    def boom(x: int) -> None:
        raise ValueError(f"bad {x}")

    @app.task
    def total(xs: list[int]) -> int:
        return sum(xs)

    return app


def test_get_and_task_failed_as_from_a_worker() -> None:
    app = make_app()
    add, boom = app.tasks["tests.results.test_eager_results.make_app.<locals>.add"], \
        app.tasks["tests.results.test_eager_results.make_app.<locals>.boom"]
    handle = add.delay(2, 3)
    assert handle.get(timeout=1) == 5 and handle.ready() and handle.status == "SUCCESS"
    assert app.result(handle.id).get() == 5
    failed = boom.delay(4)
    with pytest.raises(TaskFailed) as caught:
        failed.get()
    assert caught.value.remote_type == "ValueError"
    assert caught.value.remote_message == "bad 4"
    assert "raise ValueError" in caught.value.remote_traceback
    assert failed.attempts == 2, "the retry ran first; only the final failure is the result"
    with pytest.raises(TaskFailed):
        app.result(failed.id).get()
    with pytest.raises(ResultsDisabled, match="store_result=True"):
        app.result("never-sent").get()


def test_the_app_setting_stores_every_result() -> None:
    app = make_app(store_results=True)
    total = app.tasks["tests.results.test_eager_results.make_app.<locals>.total"]
    assert app.result(total.delay([1, 2]).id).get() == 3


def test_canvas_in_eager_mode() -> None:
    app = make_app()
    t = {name.rsplit(".", 1)[1]: task for name, task in app.tasks.items()}
    assert chain(t["add"].s(1, 2), t["add"].s(10), t["add"].si(0, 7)).delay().get() == 7
    assert group(t["add"].s(i, i) for i in range(4)).delay().get() == [0, 2, 4, 6]
    assert chord(group(*[t["add"].s(i, 1) for i in range(20)]), t["total"].s()).delay().get() == 210
    with pytest.raises(TaskFailed, match="chord member 1"):
        chord([t["add"].s(1, 1), t["boom"].s(9)], t["total"].s()).delay().get()
    with pytest.raises(TaskFailed, match="chain step"):
        chain(t["add"].s(1, 2), t["boom"].s(), t["add"].s(1)).delay().get()
