"""Broker-free: where a new beat owner starts each entry (``starting_slot``, ``BeatRunner._restored``)."""

from __future__ import annotations

from typing import Any

import pytest

import ktasks.schedule.beat as beat
from ktasks import App
from ktasks.schedule.beat import BeatRunner, starting_slot

GRACE_S = 30.0


class _Sink:
    """Stands for the transactional producer: ``_restored`` writes the owner record through it."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def begin_transaction(self) -> None:
        pass

    def send(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, key))

    def commit_transaction(self) -> None:
        pass


def _app() -> tuple[App, Any, Any]:
    app = App("beat-resume", bootstrap_servers="127.0.0.1:1")

    @app.task
    def t() -> None:
        """A task."""

    return app, app.add_periodic_task("tick", 1, t), app.add_periodic_task("tock", 1, t, catch_up=True)


def test_a_stale_slot_of_our_own_does_not_hide_the_handover_record(monkeypatch: pytest.MonkeyPatch) -> None:
    # CI failure (stop 28): the survivor had owned the schedule while the group settled, 20 s
    # before; its old next slot took precedence over the stopping owner's handover record, so
    # the slot that came due during the handover counted as missed and tick (catch_up off)
    # skipped it.
    app, _, _ = _app()
    runner = BeatRunner(app)
    runner.producer = _Sink()        # type: ignore[assignment]
    runner._paused_next = {"tick": 1036.0, "tock": 1036.0}
    runner.last = {"tick": 1057.0, "tock": 1057.0}
    runner.resume = {"tick": 1058.0, "tock": 1058.0}
    monkeypatch.setattr(beat.time, "time", lambda: 1058.4)
    runner._restored()
    assert runner.next == {"tick": 1058.0, "tock": 1058.0}
    assert runner.owner


def test_starting_slot_follows_the_newest_resume_then_catch_up() -> None:
    _, tick, tock = _app()
    # Our own slot, newer than anything on the topic (the partition went out and back): resume it.
    assert starting_slot(tick, "tick", 1058.4, 1057.0, (1058.0, None), GRACE_S) == 1058.0
    # A handover record and no slot of ours.
    assert starting_slot(tick, "tick", 1058.4, 1057.0, (None, 1058.0), GRACE_S) == 1058.0
    # A resume at or before the last fire is spent: the next slot after the last fire.
    assert starting_slot(tick, "tick", 1057.5, 1057.0, (1057.0, None), GRACE_S) == 1058.0
    # No owner for longer than the grace: missed slots, and catch_up decides.
    assert starting_slot(tick, "tick", 1100.5, 1057.0, (1058.0, None), GRACE_S) == 1101.0
    assert starting_slot(tock, "tock", 1100.5, 1057.0, (1058.0, None), GRACE_S) == 1100.0
    # Never fired: its next slot.
    assert starting_slot(tick, "tick", 1100.5, None, (None, None), GRACE_S) == 1101.0
