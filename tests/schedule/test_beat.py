"""Periodic tasks: any number of ``--beat`` runners, exactly one fires each slot; failover per ``catch_up``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from typing import Any

import pytest

from ktasks import App
from ktasks.errors import ConfigurationError
from ktasks.message import decode
from tests.helpers import wait_until
from tests.schedule.test_eta import task_records

TASKS = """
    @app.task
    def tick(name):
        effect("fired", name=name)

    app.add_periodic_task("tick", 1, tick, args=("tick",))
    app.add_periodic_task("tock", 1.0, "{module}.tick", args=("tock",), catch_up=True)
"""


def _slots(records: list[Any], name: str) -> list[int]:
    """The slots (ms) fired for entry ``name``, from the task ids (``beat-<name>-<slot ms>``), in order."""
    ids = [decode(r.value).id for r in records]
    return sorted(int(i.rsplit("-", 1)[1]) for i in ids if i.startswith(f"beat-{name}-"))


def _project(project: Any) -> Any:
    p = project(TASKS.replace("{module}", "PLACEHOLDER"), partitions=1)
    # The task's name is module.qualname: put the generated module's name in.
    path = p.dir / f"{p.module}.py"
    path.write_text(path.read_text().replace("PLACEHOLDER", p.module))
    return p


def _owns(worker: Any) -> bool:
    """True when ``worker``'s latest beat ownership line says it owns the schedule."""
    log = worker.log()
    return log.rfind("beat: owner of") > log.rfind("beat: no longer the owner")


def _owner(workers: list[Any]) -> Any:
    """The one beat owner once the group has settled.

    The second worker's join may move the schedule partition to it (the
    assignor evens out the members' totals), once or more while the group
    settles, so the first owner seen is not necessarily the owner: wait until
    both are assigned and one worker has been the only owner across two fires.
    """
    for w in workers:
        w.wait_assigned()
    project = workers[0].project
    seen: dict[str, Any] = {"owner": None, "fires": 0}

    def stable() -> Any:
        owners = [w for w in workers if _owns(w)]
        owner = owners[0] if len(owners) == 1 else None
        fires = len(project.effects("fired"))
        if owner is None or owner is not seen["owner"]:
            seen.update(owner=owner, fires=fires)
            return None
        return owner if fires >= seen["fires"] + 2 else None

    return wait_until(stable, 120, message="one worker the only beat owner across 2 fires")


def test_two_beat_workers_fire_every_slot_exactly_once_for_20_s_and_hand_over_cleanly(project: Any) -> None:
    p = _project(project)
    workers = [p.worker("-c", "1", "--beat"), p.worker("-c", "1", "--beat")]
    owner = _owner(workers)
    survivor = next(w for w in workers if w is not owner)

    def ticks() -> int:
        return len([e for e in p.effects("fired") if e["name"] == "tick"])

    wait_until(lambda: ticks() >= 21, 60, message="21 fires of tick")
    # A clean stop of the owner hands over: the other resumes at the next slot, none skipped.
    owned_before = survivor.log().count("beat: owner of")
    assert owner.stop() == 0
    wait_until(lambda: survivor.log().count("beat: owner of") > owned_before and _owns(survivor), 60,
               message="the survivor owns the schedule")
    before = ticks()
    wait_until(lambda: ticks() >= before + 3, 60, message="3 fires after the handover")
    assert survivor.stop() == 0
    records = task_records(p.bootstrap, p.topic, 42)
    ids = [decode(r.value).id for r in records]
    assert len(ids) == len(set(ids)), "a slot fired twice"
    for name in ("tick", "tock"):
        slots = _slots(records, name)
        assert len(slots) >= 21
        assert all(b - a == 1000 for a, b in zip(slots, slots[1:])), f"{name}: a slot skipped: {slots}"
    out = subprocess.run([sys.executable, "-m", "ktasks", "beat", "list", "-A", f"{p.module}:app"], cwd=p.dir,
                         env={**os.environ, "PYTHONPATH": str(p.dir)}, capture_output=True, text=True, check=True)
    assert f"owner: {socket.gethostname()}:" in out.stdout, out.stdout
    assert "tick" in out.stdout and "tock" in out.stdout, out.stdout
    assert "every 1 s" in out.stdout and out.stdout.count("-") > 4, out.stdout


def test_kill_9_of_the_beat_owner_the_other_takes_over_no_slot_twice_and_catch_up(project: Any) -> None:
    p = _project(project)
    workers = [p.worker("-c", "1", "--beat"), p.worker("-c", "1", "--beat")]
    owner = _owner(workers)
    survivor = next(w for w in workers if w is not owner)
    wait_until(lambda: len([e for e in p.effects("fired") if e["name"] == "tick"]) >= 5, 60,
               message="5 fires of tick")
    owned_before = survivor.log().count("beat: owner of")
    owner.kill()
    killed_at = time.time()
    wait_until(lambda: survivor.log().count("beat: owner of") > owned_before and _owns(survivor), 60,
               message="the survivor owns the schedule")
    before = len([e for e in p.effects("fired") if e["name"] == "tick"])
    wait_until(lambda: len([e for e in p.effects("fired") if e["name"] == "tick"]) >= before + 5, 60,
               message="5 more fires of tick")
    assert survivor.stop() == 0
    records = task_records(p.bootstrap, p.topic, 10)
    ids = [decode(r.value).id for r in records]
    assert len(ids) == len(set(ids)), "a slot fired twice across the failover"
    tick, tock = _slots(records, "tick"), _slots(records, "tock")
    gaps = [(a, b) for a, b in zip(tick, tick[1:]) if b - a != 1000]
    assert len(gaps) == 1, f"one gap, the failover: {tick}"
    lost_from, back_at = gaps[0]
    # Takeover within session_timeout_ms (3 s here) + 2 s, plus the 1 s slot it waits for.
    assert back_at / 1000 - killed_at < 3 + 2 + 1, (back_at / 1000 - killed_at)
    # catch_up=False: the missed slots are not fired. catch_up=True: the latest of them fires once.
    missed = set(range(lost_from + 1000, back_at, 1000))
    assert missed and not missed & set(tick)
    assert set(tock) & missed == {max(missed)}, (sorted(missed), tock)
    assert set(tick) <= set(tock)


def test_bad_periodic_declarations_fail_at_import_with_the_entry_named() -> None:
    app = App("beat-decl", bootstrap_servers="127.0.0.1:1")

    @app.task
    def t() -> None:
        """A task."""

    with pytest.raises(ConfigurationError, match="'nightly': bad cron expression"):
        app.add_periodic_task("nightly", "61 * * * *", t)
    with pytest.raises(ConfigurationError, match="unknown time zone"):
        app.add_periodic_task("x", "0 3 * * *", t, tz="Mars/Olympus")
    with pytest.raises(ConfigurationError, match="more than 0 seconds"):
        app.add_periodic_task("x", 0, t)
    entry = app.add_periodic_task("paris", "0 3 * * *", t, tz="Europe/Paris")
    # 03:00 in Paris is 02:00 UTC in winter.
    assert time.gmtime(entry.next_after(1_767_225_600.0)).tm_hour == 2    # from 2026-01-01T00:00Z
    assert app.add_periodic_task("often", 5, t).next_after(12.0) == 15.0
