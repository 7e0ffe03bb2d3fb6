"""Scale-out with real ``ktasks worker`` processes: workers joining busy ones get their share.

Each worker has its own ledger file, standing for a separate host: a record
run twice shows up as two ``ran`` effects, the ledger of one host cannot hide
it. Owners are read from the group's description (the admin API), as an
operator would.
"""

from __future__ import annotations

import re
import signal
import time
from collections import Counter
from datetime import datetime
from typing import Any

from kafka.errors import KafkaError

from ktasks.worker.offsetmap import decode
from tests.fixtures.worker import Project, WorkerProc, wait_effects
from tests.helpers import wait_until

SOURCE = """
@app.task
def work(n, sleep_s=0.05):
    time.sleep(sleep_s)
    effect("ran", n=n)
"""

SESSION_TIMEOUT_MS = 6000
SETTINGS = {"session_timeout_ms": SESSION_TIMEOUT_MS, "heartbeat_interval_ms": 500}
REJECTED = "commit rejected"


def owners(admin: Any, group: str, topic: str) -> dict[int, list[int]]:
    """pid -> task partitions it owns, from the group's description; empty unless the group is stable."""
    try:
        described = admin.describe_groups([group])[group]
    except KafkaError as exc:
        if not exc.retriable:    # a fresh broker's group coordinator still loading: ask again
            raise
        return {}
    if described.get("group_state") != "Stable":
        return {}
    found: dict[int, list[int]] = {}
    for member in described.get("members", []):
        pid = int(member["client_id"].rsplit(":", 1)[1])      # client ids end in "@host:pid"
        found[pid] = sorted(p for a in member["member_assignment"]["assigned_partitions"] if a["topic"] == topic
                            for p in a["partitions"])
    return found


def start(p: Project, name: str) -> WorkerProc:
    return p.worker("-c", "2", "--ledger", str(p.dir / f"ledger-{name}.sqlite3"))


def busy_worker(admin: Any, p: Project, partitions: int, count: int) -> WorkerProc:
    """Worker ``a``, owning every task partition, with ``count`` tasks enqueued for it."""
    a = start(p, "a")
    wait_shares(admin, p, [a], partitions, 60)
    enqueue(p, count)
    return a


def enqueue(p: Project, count: int, sleep_s: float = 0.05) -> None:
    for n in range(count):
        p.app_module.work.apply_async(args=(n,), kwargs={"sleep_s": sleep_s}, key=f"k{n}")
    p.app.flush()


def wait_shares(admin: Any, p: Project, workers: list[WorkerProc], share: int, timeout_s: float) -> dict:
    pids = {w.pid for w in workers}
    return wait_until(lambda: (o := owners(admin, p.group, p.topic)) and set(o) == pids
                      and all(len(o[pid]) == share for pid in pids) and o, timeout_s,
                      message=f"every worker owns {share} task partitions")


def assert_each_ran_once(p: Project, count: int) -> None:
    wait_effects(p, "ran", count, timeout_s=180)
    runs = Counter(e["n"] for e in p.effects("ran"))
    assert set(runs) == set(range(count)), f"lost: {sorted(set(range(count)) - set(runs))[:20]}"
    twice = {n: c for n, c in runs.items() if c > 1}
    assert not twice, f"{len(twice)} tasks ran more than once: {sorted(twice)[:20]}"


def _stamp(line_start: str) -> float:
    return datetime.strptime(line_start, "%Y-%m-%d %H:%M:%S,%f").timestamp()


def rejection_times(w: WorkerProc) -> list[float]:
    """When the worker logged a commit rejected by a rebalance."""
    return [_stamp(t) for t in re.findall(rf"^(\S+ \S+) .*{REJECTED}", w.log(), flags=re.M)]


def log_time(w: WorkerProc, text: str) -> float:
    """When the worker first logged ``text``."""
    found = re.search(rf"^(\S+ \S+) .*{re.escape(text)}", w.log(), flags=re.M)
    assert found, f"worker log never showed {text!r}"
    return _stamp(found.group(1))


def test_worker_joining_a_busy_worker_gets_its_share(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=2, **SETTINGS)
    a = busy_worker(kafka_admin, p, 2, 600)
    wait_effects(p, "ran", 40)                                # a is busy on both partitions
    b = start(p, "b")
    b.wait_for_log("joining group", 60)
    joined = time.monotonic()
    # One partition each, within the session timeout of b's start.
    wait_shares(kafka_admin, p, [a, b], 1, SESSION_TIMEOUT_MS / 1000)
    took = time.monotonic() - joined
    assert_each_ran_once(p, 600)
    ran_by = Counter(e["pid"] for e in p.effects("ran"))
    for w in (a, b):
        assert w.stop() == 0
    # a's commits were rejected only during b's join (two cooperative rounds): a storm
    # rejected them for many seconds, rejoining again and again.
    rejected = rejection_times(a)
    print(f"b owned its share {took:.1f}s after starting; a: {len(rejected)} commits rejected; "
          f"tasks run per child pid: {dict(ran_by)}")
    # a's commits were rejected only during b's join (its two cooperative rounds), not in a
    # storm of rebalances after it: between b joining and b's assignment (plus one commit
    # interval and poll for a to apply the last round).
    began, assigned = log_time(b, "joining group"), log_time(b, "partitions assigned: ")
    late = [t for t in rejected if not began <= t <= assigned + 1.0]
    assert not late, f"commits rejected outside b's join ({began:.2f} to {assigned:.2f}): {late}"


def test_three_workers_join_one_after_another_under_load(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=6, **SETTINGS)
    count = 1500
    workers = [busy_worker(kafka_admin, p, 6, count)]
    for name in ("b", "c"):
        wait_effects(p, "ran", len(p.effects("ran")) + 30)     # the group is busy when the next one joins
        workers.append(start(p, name))
        workers[-1].wait_for_log("joining group", 60)
    joined = time.monotonic()
    wait_shares(kafka_admin, p, workers, 2, SESSION_TIMEOUT_MS / 1000)
    print(f"each of 3 owned 2 task partitions {time.monotonic() - joined:.1f}s after the last join")
    assert_each_ran_once(p, count)
    for w in workers:
        assert w.stop() == 0


def test_sigterm_during_a_join_loses_and_repeats_nothing(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=2, **SETTINGS)
    a = busy_worker(kafka_admin, p, 2, 400)
    wait_effects(p, "ran", 40)
    b = start(p, "b")
    # a is told to stop while b joins: the group is rebalancing.
    wait_until(lambda: kafka_admin.describe_groups([p.group])[p.group].get("group_state") != "Stable"
               or "partitions assigned" in b.log(), 60, interval_s=0.01, message="b's join began")
    a.signal(signal.SIGTERM)
    assert a.wait() == 0, a.log()[-3000:]
    wait_shares(kafka_admin, p, [b], 2, SESSION_TIMEOUT_MS / 1000 + 10)
    assert_each_ran_once(p, 400)
    assert b.stop() == 0


SLOW_FIRST = """
@app.task
def work(n, sleep_s=0.05):
    if n == 0 and not os.path.exists(EFFECTS + ".slow"):
        open(EFFECTS + ".slow", "w").close()
        effect("slow", n=n)
        time.sleep(600)           # holds the committed offset until the worker is killed
    time.sleep(sleep_s)
    effect("ran", n=n)
"""


def test_next_owner_skips_what_finished_above_a_slow_record(project: Any, kafka_admin: Any) -> None:
    p = project(SLOW_FIRST, partitions=1, **SETTINGS)
    a = busy_worker(kafka_admin, p, 1, 30)
    wait_effects(p, "slow", 1)
    wait_effects(p, "ran", 29)                  # everything after the slow record finished
    # Committed: offset 0 (the slow record), with offsets 1..29 in the commit's metadata.
    def committed_map() -> frozenset[int]:
        om = kafka_admin.list_group_offsets({p.group: None}).get(p.group, {})
        return frozenset().union(*(decode(o.metadata, 0) for tp, o in om.items() if tp.topic == p.topic
                                   and o.offset == 0))

    wait_until(lambda: committed_map() == set(range(1, 30)), 30, message="offset 0 committed with 1..29 in its map")
    a.kill()                                    # the host dies; b has a ledger of its own
    b = start(p, "b")
    wait_effects(p, "ran", 30, timeout_s=120)   # b runs the slow record again...
    runs = Counter(e["n"] for e in p.effects("ran"))
    assert runs[0] == 1
    # ...and none of those a had finished above it.
    assert all(runs[n] == 1 for n in range(1, 30)), {n: c for n, c in runs.items() if c > 1}
    assert b.stop() == 0
