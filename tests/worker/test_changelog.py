"""The ledger follows the partition: real ``ktasks worker`` processes with one ledger file each (two hosts).

Each worker gets its own ledger file and working directory, standing for a
separate host: what one host's SQLite knows, the other's does not, unless the
ledger changelog carries it.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

import pytest

from tests.fixtures.worker import Project, WorkerProc, wait_effects
from tests.helpers import wait_until
from tests.worker.test_scaleout import wait_shares

SOURCE = """
@app.task
def work(n, sleep_s=0.05):
    effect("start", n=n, ppid=os.getppid())
    time.sleep(sleep_s)
    effect("ran", n=n, ppid=os.getppid())
"""

SETTINGS = {"session_timeout_ms": 6000, "heartbeat_interval_ms": 500}


def host(p: Project, name: str, *args: str) -> WorkerProc:
    """A worker standing for host ``name``: its own ledger file and working directory."""
    home = p.dir / f"host-{name}"
    home.mkdir(exist_ok=True)
    return p.worker("-c", "2", "--ledger", str(home / "ledger.sqlite3"), *args,
                    env={"XDG_STATE_HOME": str(home)})


def changelog(on: bool) -> dict[str, Any]:
    return {**SETTINGS, "ledger_changelog": on}


def test_same_idempotency_key_on_two_hosts_runs_once(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=2, **changelog(True))
    a, b = host(p, "a"), host(p, "b")
    a.wait_assigned()
    wait_shares(kafka_admin, p, [a, b], 1, 60)
    p.app_module.work.apply_async(args=(1,), kwargs={"sleep_s": 0}, idempotency_key="order-1")
    p.app.flush()
    [first] = wait_effects(p, "ran", 1)
    ran_on, other = (a, b) if first["ppid"] == a.pid else (b, a)
    # The host that ran it goes away; its partition (the key's: same key, same partition)
    # moves to the other host, which is then given the same key again.
    assert ran_on.stop() == 0
    wait_shares(kafka_admin, p, [other], 2, 60)
    p.app_module.work.apply_async(args=(2,), kwargs={"sleep_s": 0}, idempotency_key="order-1")
    p.app_module.work.apply_async(args=(3,), kwargs={"sleep_s": 0}, idempotency_key="order-1-marker")
    p.app.flush()
    wait_until(lambda: sum(p.committed(kafka_admin).values()) == 3, 60, message="3 records committed")
    assert sorted(e["n"] for e in p.effects("ran")) == [1, 3]
    assert "already succeeded" in other.log()
    assert other.stop() == 0


def seed_scenario(p: Project, kafka_admin: Any, count: int = 1000) -> tuple[int, int, set[int]]:
    """Two hosts, ``count`` tasks, B joins, ``kill -9`` of A mid-stream.

    Returns (tasks A ran that B ran again, tasks running on A at the kill, lost tasks).
    """
    a = host(p, "a")
    a.wait_assigned()
    wait_shares(kafka_admin, p, [a], 2, 60)
    for n in range(count):
        p.app_module.work.apply_async(args=(n,), key=f"k{n}")
    p.app.flush()
    wait_effects(p, "ran", 50, timeout_s=120)
    b = host(p, "b")
    wait_shares(kafka_admin, p, [a, b], 1, 60)
    wait_effects(p, "ran", count // 2, timeout_s=180)
    a.kill()
    assert a.wait() == -signal.SIGKILL
    at_kill = p.effects()
    wait_shares(kafka_admin, p, [b], 2, 60)
    wait_until(lambda: {e["n"] for e in p.effects("ran")} >= set(range(count)), 240, message="every task ran")
    assert b.stop() == 0
    ran_by_a = {e["n"] for e in at_kill if e["kind"] == "ran" and e["ppid"] == a.pid}
    started_by_a = {e["n"] for e in at_kill if e["kind"] == "start" and e["ppid"] == a.pid}
    runs = Counter(e["n"] for e in p.effects("ran"))
    again = {n for n in ran_by_a if runs[n] > 1}
    lost = set(range(count)) - set(runs)
    return len(again), len(started_by_a - ran_by_a), lost


@pytest.mark.parametrize("on", [True, False], ids=["changelog", "no-changelog"])
def test_kill_9_of_a_host_repeats_at_most_its_tasks_in_flight(project: Any, kafka_admin: Any, on: bool) -> None:
    # A commit interval of 2 s stands for a committed offset held back (a slow task, a
    # rebalance rejecting commits): what the next owner must learn from the ledger.
    p = project(SOURCE, partitions=2, commit_interval_ms=2000, **changelog(on))
    again, running, lost = seed_scenario(p, kafka_admin)
    print(f"changelog {'on' if on else 'off'}: {again} of the tasks A finished ran again on B; "
          f"{running} were running on A at the kill; lost {len(lost)}")
    assert not lost
    # A's 2 children: each may have had one task running and one whose finish was on its
    # way (its changelog record not yet acknowledged) at the kill.
    bound = 2 * 2
    if on:
        assert again <= bound, f"{again} finished tasks ran again"
    else:
        # Without the changelog, B's ledger knows nothing of A's: what finished since
        # A's last commit runs again (the hazard the changelog removes).
        assert again > bound, f"only {again} ran again without the changelog"


def test_sigterm_while_a_rejected_final_commit_clears_commits_and_exits_0(project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def work(n):
            effect("ran", n=n)
    """, partitions=1, commit_interval_ms=600000)
    # The first 5 commits fail (the first commit is the final one: the interval is long),
    # more than the 3 tries a stop used to make.
    w = p.worker("-c", "1", env={"KTASKS_FAULTS": "commit=raise-retriable*5"})
    w.wait_assigned()
    for n in range(3):
        p.app_module.work.delay(n)
    p.app.flush()
    wait_effects(p, "ran", 3)
    assert w.stop() == 0, w.log()[-3000:]
    assert "final commit of 3 finished record(s) failed" in w.log()
    assert p.committed(kafka_admin) == {0: 3}


def test_changelog_topics_are_created_compacted_with_the_task_topic_partitions(
        project: Any, kafka_admin: Any) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType

    p = project(SOURCE, partitions=3)
    w = host(p, "a")
    w.wait_assigned()
    name = p.topic + ".ledger"
    [described] = kafka_admin.describe_topics([name])
    assert len(described["partitions"]) == 3
    configs = kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, name, {"cleanup.policy": None})],
                                           config_filter="all")
    assert configs["topic"][name]["cleanup.policy"]["value"] == "compact,delete"
    assert w.stop() == 0


def test_a_worker_starts_no_more_tasks_than_its_unacknowledged_changelog_limit(project: Any, kafka_admin: Any) -> None:
    from kafka.admin import ConfigResource, ConfigResourceType, NewTopic

    p = project(SOURCE, partitions=1, ledger_changelog_max_unacked=6, **SETTINGS)
    name = p.topic + ".ledger"
    # A changelog that takes no record (each is too large for it): what the worker finishes
    # is never acknowledged, as when the broker is unreachable.
    kafka_admin.create_topics([NewTopic(name, 1, 1, topic_configs={"cleanup.policy": "compact",
                                                                    "max.message.bytes": "16"})])
    w = host(p, "a")
    w.wait_assigned()
    for n in range(40):
        p.app_module.work.apply_async(args=(n,), kwargs={"sleep_s": 0})
    p.app.flush()
    wait_until(lambda: "starting no new task" in w.log(), 60, message="the worker never held its tasks")
    # Held across several rounds of resending (one per commit interval), nothing more starts.
    wait_until(lambda: w.log().count("sending it again") >= 30, 60, message="3 rounds of resends")
    assert len(p.effects("start")) <= 6, p.effects("start")
    kafka_admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, name,
                                              configs={"cleanup.policy": "compact",
                                                       "max.message.bytes": "1048588"})])
    wait_effects(p, "ran", 40, timeout_s=120)
    assert "starting tasks after a hold" in w.log()
    assert w.stop() == 0
    assert Counter(e["n"] for e in p.effects("ran")) == Counter(range(40))
    assert p.committed(kafka_admin) == {0: 40}
