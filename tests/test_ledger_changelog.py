"""The ledger changelog's backpressure, broker-free: a fake producer whose acknowledgements the test gives."""

from __future__ import annotations

from typing import Any

from ktasks.ledger_changelog import LedgerChangelog
from ktasks.middleware import Dispatched, TaskEvent
from ktasks.settings import Settings


class FakeFuture:
    def __init__(self) -> None:
        self.is_done = False
        self.ok = False

    def succeeded(self) -> bool:
        return self.ok

    def ack(self) -> None:
        self.is_done = self.ok = True


class FakeApp:
    def __init__(self) -> None:
        self.futures: list[FakeFuture] = []
        self.client_id = "test"
        outer = self

        class Producer:
            def get(self) -> Any:
                return self

            def send(self, *args: Any, **kwargs: Any) -> FakeFuture:
                outer.futures.append(FakeFuture())
                return outer.futures[-1]

        self.producer = Producer()


def changelog(limit: int, tmp_path: Any) -> tuple[LedgerChangelog, FakeApp]:
    app = FakeApp()
    settings = Settings({"ledger_changelog_max_unacked": limit})
    mw = LedgerChangelog(app, settings, str(tmp_path / "ledger.sqlite3"), {"t": "t.ledger"},  # type: ignore[arg-type]
                         {"t.ledger": 1})
    return mw, app


def run(mw: LedgerChangelog, offsets: range) -> None:
    mw.tasks_dispatched([Dispatched("t", 0, o, "task", f"id-{o}") for o in offsets])


def finish(mw: LedgerChangelog, offsets: range) -> None:
    for o in offsets:
        mw.task_finished(TaskEvent("task", f"id-{o}", "succeeded", "t", 0, o, ledger_key=f"id-{o}"))


def test_running_and_unacknowledged_tasks_share_the_limit_and_the_hold_ends_below_half(tmp_path: Any) -> None:
    mw, app = changelog(10, tmp_path)
    assert mw.dispatch_room() == 10
    run(mw, range(0, 4))
    assert mw.dispatch_room() == 6
    finish(mw, range(0, 4))                    # finished, not acknowledged: still at risk
    assert mw.dispatch_room() == 6
    run(mw, range(4, 10))
    assert mw.dispatch_room() == 0             # 4 waiting + 6 running: held
    finish(mw, range(4, 10))
    for f in app.futures[:4]:
        f.ack()
    mw._swept_at = 0.0
    assert mw.dispatch_room() == 0             # 6 of 10 wait: still above half
    for f in app.futures[4:6]:
        f.ack()
    mw._swept_at = 0.0
    assert mw.dispatch_room() == 6             # 4 wait: under half, the hold ends
    for f in app.futures[6:]:
        f.ack()
    mw._swept_at = 0.0
    assert mw.dispatch_room() == 10


def test_a_limit_of_0_means_no_limit(tmp_path: Any) -> None:
    mw, _ = changelog(0, tmp_path)
    run(mw, range(0, 100))
    assert mw.dispatch_room() is None
