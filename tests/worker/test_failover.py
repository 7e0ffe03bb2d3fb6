"""The seed scenario: a worker dies after committing offset 100; another resumes from 100.

From shared/seeds: worker A processes partition 0 and has committed offset 100,
worker B processes partition 1. A fails; Kafka rebalances; B takes partition 0,
reads the committed offset (100) from ``__consumer_offsets`` and resumes from
there. Every task completes.
"""

from __future__ import annotations

import signal
from collections import Counter
from typing import Any

from kafka.errors import KafkaError
from kafka.partitioner.default import murmur2

from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

SOURCE = """
import signal

@app.task
def step(n, die_at=None):
    if n == die_at and not os.path.exists(EFFECTS + ".died"):
        open(EFFECTS + ".died", "w").close()
        effect("dying", n=n)
        # The host dies mid-task: SIGKILL the worker parent (its children die with it).
        os.kill(os.getppid(), signal.SIGKILL)
        os._exit(1)
    effect("ran", n=n)
"""


def key_for_partition(partition: int, partitions: int) -> str:
    """A message key that kafka's default partitioner (murmur2) puts on ``partition``."""
    for i in range(10_000):
        key = f"k{i}"
        if (murmur2(key.encode()) & 0x7FFFFFFF) % partitions == partition:
            return key
    raise AssertionError("no key found")


def describe(admin: Any, group: str) -> dict[str, Any]:
    """The group's description; empty while a fresh broker's group coordinator is still loading."""
    try:
        return dict(admin.describe_groups([group])[group])
    except KafkaError as exc:
        if not exc.retriable:
            raise
        return {}


def owners(admin: Any, group: str, topic: str) -> dict[int, int]:
    """Task partition -> pid of the worker that owns it now, from the group's description."""
    described = describe(admin, group)
    if described.get("group_state") != "Stable":
        return {}
    found: dict[int, int] = {}
    for member in described.get("members", []):
        pid = int(member["client_id"].rsplit(":", 1)[1])      # client ids end in "@host:pid"
        for assigned in member["member_assignment"]["assigned_partitions"]:
            if assigned["topic"] == topic:
                for partition in assigned["partitions"]:
                    found[partition] = pid
    return found


def members(admin: Any, group: str) -> int:
    described = describe(admin, group)
    return len(described.get("members") or []) if described.get("group_state") == "Stable" else 0


def test_seed_scenario_worker_dies_after_commit_100_other_resumes_from_100(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=2)
    step = p.app_module.step
    key0, key1 = key_for_partition(0, 2), key_for_partition(1, 2)

    # 1. Normal operation: two workers, one partition each.
    w1, w2 = p.worker("-c", "2"), p.worker("-c", "2")
    by_pid = {w1.pid: w1, w2.pid: w2}
    # Both workers in the group, both task partitions owned. The sticky assignors balance
    # partition counts over all subscribed topics (retry topics too), so B may own partition 1
    # or only retry partitions: A is whoever owns partition 0, B the other worker.
    split = wait_until(lambda: (o := owners(kafka_admin, p.group, p.topic)) and len(o) == 2
                       and members(kafka_admin, p.group) == 2 and o, 90,
                       message="both workers in the group, both task partitions owned")
    a = by_pid[split[0]]
    b = w2 if a is w1 else w1

    for n in range(100):
        step.apply_async(args=(n,), key=key0)          # partition 0: offsets 0..99
    for n in range(1000, 1050):
        step.apply_async(args=(n,), key=key1)          # partition 1
    p.app.flush()
    wait_until(lambda: p.committed(kafka_admin) == {0: 100, 1: 50}, 60,
               message="worker A committed offset 100 on partition 0")

    # 2. Worker A fails while running the record at offset 100.
    for n in range(100, 200):
        step.apply_async(args=(n,), kwargs={"die_at": 100}, key=key0)
    p.app.flush()
    assert a.wait(60) == -signal.SIGKILL
    assert [e["n"] for e in p.effects("dying")] == [100]
    # What A left in __consumer_offsets: exactly 100, nothing of the unfinished record.
    assert p.committed(kafka_admin)[0] == 100

    # 3. B takes partition 0 over, reads 100 and resumes from there; every task completes.
    ran = wait_effects(p, "ran", 250, timeout_s=90)
    counts = Counter(e["n"] for e in ran)
    assert set(counts) == set(range(200)) | set(range(1000, 1050))
    assert all(c == 1 for c in counts.values()), {n: c for n, c in counts.items() if c > 1}
    b_log = b.log()
    assert f"[{p.topic}/0@100]" in b_log, "B resumed partition 0 from offset 100"
    assert f"[{p.topic}/0@99]" not in b_log, "B did not re-run anything A had committed"
    wait_until(lambda: p.committed(kafka_admin) == {0: 200, 1: 50}, 30, message="B committed to the end")
    assert b.stop() == 0


def test_warm_shutdown_hands_partitions_over_without_duplicates(project: Any, kafka_admin: Any) -> None:
    p = project("""
        import time

        @app.task
        def slow(n):
            time.sleep(0.05)
            effect("ran", n=n)
    """, partitions=2)
    w1, w2 = p.worker("-c", "2"), p.worker("-c", "2")
    w1.wait_assigned()
    w2.wait_assigned()
    for n in range(200):
        p.app_module.slow.delay(n)
    p.app.flush()
    wait_effects(p, "ran", 40)
    assert w1.stop() == 0                 # warm: finish in-flight, commit, leave the group
    ran = wait_effects(p, "ran", 200, timeout_s=90)
    counts = Counter(e["n"] for e in ran)
    assert set(counts) == set(range(200))
    assert max(counts.values()) == 1, "a warm shutdown commits everything finished: nothing runs twice"
    assert "warm shutdown" in w1.log()
    wait_until(lambda: sum(p.committed(kafka_admin).values()) == 200, 30, message="all committed")
    assert w2.stop() == 0
