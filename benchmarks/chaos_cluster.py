"""Chaos on a three-node cluster: ``python -m benchmarks.chaos --brokers 3 [--hosts N]``.

A :class:`ktasks.dev.cluster.DevCluster` (replication factor 3,
``min.insync.replicas=2``) of its own; workers join the group, then a producer
enqueues ``--n`` tasks at a steady rate (half ``chaos.plain``, half ``chaos.tx``,
as in :mod:`benchmarks.chaos`) while the workers drain them. During the run the
harness ``kill -9``\\ s, one after the other, the leader of a task partition, the
group coordinator and the active controller, each started again ``down_s``
later. It reports tasks lost (enqueued, acknowledged, no effect), calls whose
``wait_sent()`` raised (the caller saw those), duplicates against the in-flight
bound, the longest gap between two task completions, and the WARNING lines the
workers logged.

With ``--hosts N`` the N workers each get their own ledger file and working
directory, as separate hosts would: a task redelivered to another host after a
broker failure is not skipped by that host's ledger, so plain duplicates can
exceed the in-flight bound there.
"""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks import chaos
from benchmarks.peerapps.chaos_app import PLAIN_TABLE

SECTION = "Chaos run on a three-node cluster"
KILLS = ("partition-leader", "group-coordinator", "active-controller")


@dataclass
class ClusterChaosConfig:
    """What to run; ``hosts`` > 0 gives that many workers a ledger and working directory each."""

    n: int = 4000
    workers: int = 2
    hosts: int = 0
    concurrency: int = 2
    partitions: int = 6
    enqueue_s: float = 240.0          # the producer spreads the n tasks over this long: past the
                                      # third restart (a node took 50 to 100 s to start on 2 cores)
    first_kill_s: float = 10.0        # after the enqueueing starts
    down_s: float = 15.0              # each killed node stays down this long
    gap_s: float = 12.0               # between a restart and the next kill
    plain_sleep_ms: float = 10.0
    deadline_s: float = 480.0

    @property
    def fleet_size(self) -> int:
        return self.hosts or self.workers


@dataclass
class Kill:
    kind: str
    node: int
    at_s: float
    back_after_s: float = 0.0


@dataclass
class ClusterChaosResult:
    config: ClusterChaosConfig
    kills: list[Kill] = field(default_factory=list)
    sent: int = 0
    send_failed: int = 0
    lost: list[int] = field(default_factory=list)
    plain_duplicates: int = 0
    tx_duplicates: int = 0
    in_flight_bound: int = 0
    longest_stall_s: float = 0.0
    stall_after: str = ""
    warnings: list[int] = field(default_factory=list)      # per worker log
    coordinator_dead: int = 0
    finished: bool = False
    drain_s: float = 0.0
    exit_codes: list[int | None] = field(default_factory=list)

    def problems(self) -> list[str]:
        out = []
        if self.lost:
            out.append(f"lost {len(self.lost)} acknowledged tasks (e.g. {self.lost[:10]})")
        if self.tx_duplicates:
            out.append(f"{self.tx_duplicates} duplicated ledger-transaction effects")
        if self.plain_duplicates > self.in_flight_bound and not self.config.hosts:
            out.append(f"{self.plain_duplicates} plain duplicates, over the bound {self.in_flight_bound}")
        if not self.finished:
            out.append("not finished before the deadline")
        return out

    def summary(self) -> str:
        c = self.config
        kills = ", ".join(f"{k.kind} (node {k.node}) at {k.at_s:.0f} s, back after {k.back_after_s:.0f} s"
                          for k in self.kills)
        problems = self.problems()
        return "\n".join([
            f"tasks: {c.n} over {c.enqueue_s:.0f} s, {c.fleet_size} workers × -c {c.concurrency}"
            + (f", {c.hosts} hosts (a ledger each)" if c.hosts else ", one shared ledger"),
            f"kills: {kills}",
            f"enqueued: {self.sent} acknowledged, {self.send_failed} wait_sent() raised",
            f"finished: {self.finished}, drained {self.drain_s:.1f} s after the last enqueue",
            f"lost: {len(self.lost)}; duplicates: plain {self.plain_duplicates} (in-flight bound "
            f"{self.in_flight_bound}), ledger-transaction {self.tx_duplicates}",
            f"longest stall (no task finished): {self.longest_stall_s:.1f} s, {self.stall_after}",
            f"WARNING lines per worker log: {self.warnings} ({self.coordinator_dead} 'Marking the coordinator "
            f"dead' in all); exit codes {self.exit_codes}",
            "result: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)),
        ])


def _victim(cluster: Any, kind: str, topic: str, group: str) -> int | None:
    """The node to kill: a task partition's leader that is neither coordinator nor controller, etc."""
    controller = cluster.active_controller()
    coordinator = cluster.group_coordinator(group)
    if kind == "active-controller":
        return controller
    if kind == "group-coordinator":
        return coordinator
    leaders = [n for n in cluster.partition_leaders(topic).values() if n is not None]
    spare = [n for n in leaders if n not in (controller, coordinator)] or leaders
    return spare[0] if spare else None


def _producer(app: Any, n: int, seconds: float, handles: list[tuple[int, Any]], rng_sleep: float) -> None:
    """Enqueue ``n`` tasks evenly over ``seconds`` (half plain, half in the ledger transaction)."""
    start = time.monotonic()
    for i in range(n):
        due = start + seconds * i / n
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        if i % 2:
            handles.append((i, app.send_task("chaos.tx", (i,))))
        else:
            handles.append((i, app.send_task("chaos.plain", (i, round(rng_sleep * (i % 7) / 7, 2)))))


def _longest_gap(stamps: list[float], kills: list[Kill], t_start: float) -> tuple[float, str]:
    stamps = sorted(stamps)
    best, where = 0.0, ""
    for a, b in zip(stamps, stamps[1:]):
        if b - a > best:
            best, at = b - a, a - t_start
            before = [k for k in kills if k.at_s <= b - t_start]
            k = before[-1] if before else None
            where = (f"from {at:.0f} s; the last kill before its end: {k.kind} at {k.at_s:.0f} s, node back at "
                     f"{k.at_s + k.back_after_s:.0f} s" if k else f"from {at:.0f} s, before any kill")
    return best, where


def run(config: ClusterChaosConfig, workdir: Path, log: Callable[[str], None] = print) -> ClusterChaosResult:
    """Run the scenario in ``workdir`` (logs and databases stay there)."""
    import sqlite3

    from ktasks import App
    from ktasks.dev.cluster import DevCluster, free_port_run
    from ktasks.errors import EnqueueError

    result = ClusterChaosResult(config)
    failed: set[int] = set()
    wall0 = time.time()
    tag = uuid.uuid4().hex[:8]
    topic, group = f"chaos-{tag}", f"chaos-{tag}-group"
    plain_db = workdir / "effects.sqlite3"
    con = sqlite3.connect(plain_db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute(f"CREATE TABLE IF NOT EXISTS {PLAIN_TABLE} (n INTEGER, pid INTEGER, ts REAL)")
    con.close()
    ledgers = chaos.ledger_files(workdir, config.hosts)
    effects = chaos.Effects(plain_db, ledgers)
    cluster = DevCluster(port=free_port_run(3), size=3, state_dir=workdir / "kafka")
    log(f"starting a 3-node cluster at {cluster.bootstrap}")
    cluster.up(timeout_s=240)
    try:
        settings: dict[str, Any] = {
            "bootstrap_servers": cluster.bootstrap, "default_topic": topic, "group_id": group,
            "partitions": config.partitions, "replication_factor": 3, "ledger_path": str(ledgers[0]),
            "session_timeout_ms": 6000, "heartbeat_interval_ms": 500, "send_timeout_ms": 30000,
            "retry_backoff_ms": 200, "retry_tiers_ms": [200, 1000, 5000],
        }
        env = chaos.worker_env(settings, plain_db)
        chaos_cfg = chaos.ChaosConfig(workers=config.fleet_size, concurrency=config.concurrency,
                                      hosts=bool(config.hosts))
        fleet = chaos.Fleet(workdir, env, chaos_cfg)
        app = App("chaos", **settings)
        handles: list[tuple[int, Any]] = []
        try:
            fleet.start()
            if not chaos._wait(fleet.settled, 180, 0.2):
                log("workers did not settle within 180 s; going on")
            app.ensure_topics([topic])
            t0, wall0 = time.monotonic(), time.time()
            producer = threading.Thread(target=_producer, args=(app, config.n, config.enqueue_s, handles,
                                                                config.plain_sleep_ms), daemon=True)
            producer.start()
            log(f"enqueueing {config.n} tasks over {config.enqueue_s:.0f} s to {topic}")
            time.sleep(config.first_kill_s)
            for kind in KILLS:
                node = _victim(cluster, kind, topic, group)
                if node is None:
                    log(f"no node found for {kind}; skipped")
                    continue
                kill = Kill(kind, node, time.monotonic() - t0)
                cluster.stop_node(node, kill=True)
                log(f"{kill.at_s:6.1f} s  kill -9 {kind} (node {node}), {effects.done()} done")
                time.sleep(config.down_s)
                cluster.start_node(node, timeout_s=240)
                kill.back_after_s = time.monotonic() - t0 - kill.at_s
                result.kills.append(kill)
                log(f"{time.monotonic() - t0:6.1f} s  node {node} back")
                time.sleep(config.gap_s)
            producer.join()
            app.flush(120)
            t_enqueued = time.monotonic()
            for i, handle in handles:
                try:
                    handle.wait_sent(timeout=0)
                except EnqueueError:
                    failed.add(i)
            result.sent, result.send_failed = len(handles) - len(failed), len(failed)
            progress = chaos.Progress(effects, t0 + config.deadline_s, 120.0)
            result.finished = progress.reach(result.sent)
            result.drain_s = time.monotonic() - t_enqueued
            topics = [topic] + [f"{topic}.retry-{t}ms" for t in settings["retry_tiers_ms"]]
            chaos._wait(lambda: chaos._lag(cluster.bootstrap, group, topics) == 0, 60, 0.5)
            result.exit_codes = fleet.stop()
        finally:
            app.close()
            for p in fleet.procs:
                if p.poll() is None:
                    chaos.procs.kill_tree(p.pid)
    finally:
        cluster.down(wipe=True, timeout_s=30)
    plain, tx = effects.plain(), effects.tx()
    seen = {n for n, _, _ in plain} | {n for n, _, _ in tx}
    result.lost = sorted(set(range(config.n)) - failed - seen)
    result.plain_duplicates = sum(c - 1 for c in Counter(n for n, _, _ in plain).values())
    result.tx_duplicates = sum(c - 1 for c in Counter(n for n, _, _ in tx).values())
    # A broker failure kills no task; what may run twice is what was running when a partition
    # moved (a rebalance after a session lapse): -c per worker, per kill.
    result.in_flight_bound = len(result.kills) * config.fleet_size * config.concurrency
    result.longest_stall_s, result.stall_after = _longest_gap(
        [ts for _, _, ts in plain + tx], result.kills, wall0)
    logs = [path.read_text(errors="replace") for path in fleet.logs]
    result.warnings = [len(re.findall(r"^\S+ \S+ WARNING ", text, re.M)) for text in logs]
    result.coordinator_dead = sum(text.count("Marking the coordinator dead") for text in logs)
    return result


def render(result: ClusterChaosResult, command: str) -> str:
    """The docs section for one run."""
    c = result.config
    rows = "\n".join(f"| {k.at_s:.0f} | {k.kind} | {k.node} | {k.back_after_s:.0f} |" for k in result.kills)
    problems = result.problems()
    return (
        f"## {SECTION}" + (f" ({c.hosts} hosts)" if c.hosts else "") + "\n\n"
        f"{c.n:,} tasks enqueued at a steady rate over {c.enqueue_s:.0f} s (half plain, half writing through "
        f"`ctx.ledger`), {c.fleet_size} workers with `-c {c.concurrency}` on {c.partitions} partitions "
        "(replication factor 3, `min.insync.replicas=2`), "
        + ("each with its own ledger file and working directory (separate hosts)" if c.hosts
           else "sharing one ledger (one host)")
        + f"; `kill -9` of each node below, started again {c.down_s:.0f} s later.\n\n"
        f"- Command: `{command}`\n"
        f"- Enqueued: {result.sent:,} acknowledged; {result.send_failed} `wait_sent()` raised (the caller saw it)\n"
        f"- Lost: **{len(result.lost)}**; duplicates: plain **{result.plain_duplicates}** (in-flight bound "
        f"{result.in_flight_bound}), ledger-transaction **{result.tx_duplicates}**\n"
        f"- Longest stall (no task finished): **{result.longest_stall_s:.1f} s**, {result.stall_after}\n"
        f"- WARNING lines per worker log: {result.warnings}; \"Marking the coordinator dead\": "
        f"{result.coordinator_dead} in all\n"
        f"- Drained {result.drain_s:.1f} s after the last enqueue; exit codes {result.exit_codes}\n"
        f"- Result: **{'pass' if not problems else 'FAIL: ' + '; '.join(problems)}**\n\n"
        "| at, s | killed | node | back after, s |\n|---:|---|---:|---:|\n" + rows + "\n"
    )
