"""Chaos run: tasks through ktasks workers that get killed, and a broker that restarts; nothing may be lost.

Not a test (``tests/test_chaos.py`` runs a small one). ``--n`` tasks are
enqueued, half ``chaos.plain`` (an INSERT into a separate SQLite file, outside
the ledger) and half ``chaos.tx`` (an INSERT made through ``ctx.ledger``, in
the transaction that records the task's success); see
:mod:`benchmarks.peerapps.chaos_app`. Then ``--workers`` workers (``-c 2``
each) drain them while, at evenly spread points of progress, the harness

* ``kill -9``\\ s a random worker (its children die with it) and starts it again,
* ``kill -9``\\ s a random child of a random worker (the worker replaces it),
* once, stops the Kafka broker and starts it again with its data kept (the
  run starts its own broker for this, through :class:`ktasks.dev.DevBroker`).

Afterwards every task's effect must be present (nothing lost), effects
written in the ledger transaction must have no duplicates, and duplicated
plain effects must not outnumber the tasks that were in flight at the kills,
counted as ``-c`` per killed worker plus one per killed child::

    python -m benchmarks.chaos --n 10000 --workers 3 --kills 6

It stops when everything is done or after ``--deadline`` seconds, prints its
figures, and exits 1 if a check failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.peerapps import procs
from benchmarks.peerapps.chaos_app import PLAIN_TABLE, TX_TABLE

SECTION = "Chaos run"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
T = TypeVar("T")


@dataclass
class ChaosConfig:
    """What to run. ``kills`` counts worker and child kills together (both kinds when >= 2)."""

    n: int = 10_000
    workers: int = 3
    concurrency: int = 2
    kills: int = 6
    broker_restart: bool = True
    seed: int | None = None
    deadline_s: float = 480.0
    plain_sleep_ms: float = 10.0          # plain tasks sleep uniformly in [0, this]
    partitions: int = 6
    session_timeout_ms: int = 3000
    heartbeat_interval_ms: int = 300
    loglevel: str = "INFO"
    prefetch_per_partition: int = 1000    # the default
    warm_start: bool = True               # workers join the group before the tasks are enqueued
    stall_s: float = 60.0                 # give up when no task finished for this long
    hosts: bool = False                   # each worker a host: a ledger file and working directory of its own
    max_unacked: int = 500                # ledger_changelog_max_unacked: what a worker kill may re-run on a host


@dataclass
class Event:
    """One act of chaos."""

    kind: str                             # kill-worker, kill-child, broker-restart
    at_s: float                           # since the tasks were enqueued (and the workers started)
    done_before: int                      # tasks with an effect when it fired
    pids: list[int] = field(default_factory=list)   # processes killed (a worker: it and its children)
    in_flight_bound: int = 0
    duration_s: float = 0.0               # broker restarts: down + up
    duplicates: int = 0                   # plain duplicates whose first copy a killed process wrote


@dataclass
class ChaosResult:
    """Figures of one run; :meth:`problems` lists the failed checks."""

    config: ChaosConfig
    elapsed_s: float = 0.0
    drain_s: float = 0.0
    finished: bool = False
    stalled: bool = False
    plain_expected: int = 0
    tx_expected: int = 0
    plain_missing: list[int] = field(default_factory=list)
    tx_missing: list[int] = field(default_factory=list)
    plain_rows: int = 0
    tx_rows: int = 0
    plain_duplicates: int = 0
    tx_duplicates: int = 0
    in_flight_bound: int = 0
    events: list[Event] = field(default_factory=list)
    dead_lettered: int = 0
    lag_left: int | None = None
    worker_incarnations: int = 0
    child_deaths_logged: int = 0
    commit_failures_logged: int = 0       # "offset commit failed" lines: finished records were dead-lettered
    rebalance_commit_failures: int = 0    # ... of them, with RebalanceInProgressError
    exit_codes: list[int | None] = field(default_factory=list)   # of the last incarnations, at the warm stop
    duplicate_age_ms: float = 0.0         # the oldest first copy of a duplicate, before its process's last effect
    changelog_checked: bool = False       # the ledger changelog was read back
    ran_after_acknowledged: list[int] = field(default_factory=list)  # duplicates whose first success was there
    workdir: str = ""

    def problems(self) -> list[str]:
        """The checks that failed, in words (empty when the run passed)."""
        out = []
        if self.plain_missing or self.tx_missing:
            out.append(f"lost: {len(self.plain_missing)} plain effects (e.g. {self.plain_missing[:10]}), "
                       f"{len(self.tx_missing)} ledger-transaction effects (e.g. {self.tx_missing[:10]})")
        if self.ran_after_acknowledged:
            out.append(f"{len(self.ran_after_acknowledged)} task(s) ran again after their success was on the "
                       f"ledger changelog (e.g. {self.ran_after_acknowledged[:10]})")
        if self.config.hosts:
            # A task is finished for other hosts once its changelog record is acknowledged: a
            # killed worker's tasks that had finished without it yet are in flight too, and run
            # again (both kinds: a ledger transaction commits in the killed host's file). The
            # check above is the bound; the changelog must have been read for it to hold.
            if not self.changelog_checked:
                out.append("the ledger changelog could not be read back")
            if self.plain_duplicates + self.tx_duplicates > self.in_flight_bound:
                out.append(f"{self.plain_duplicates + self.tx_duplicates} duplicated effects, more than the "
                           f"{self.in_flight_bound} the kills may re-run (ledger_changelog_max_unacked per "
                           "killed worker, 1 per killed child)")
        else:
            if self.tx_duplicates:
                out.append(f"{self.tx_duplicates} duplicated ledger-transaction effects (must be 0)")
            if self.plain_duplicates > self.in_flight_bound:
                out.append(f"{self.plain_duplicates} duplicated plain effects, more than the "
                           f"{self.in_flight_bound} tasks in flight at the kills")
        if any(code != 0 for code in self.exit_codes):
            out.append(f"a worker did not stop cleanly: exit codes {self.exit_codes} (see its log)")
        if not self.finished:
            out.append(f"no task finished for {self.config.stall_s:.0f} s" if self.stalled
                       else f"not finished within {self.config.deadline_s:.0f} s")
        return out

    def summary(self) -> str:
        c = self.config
        kinds = Counter(e.kind for e in self.events)
        lines = [
            f"tasks: {c.n} ({self.plain_expected} plain, {self.tx_expected} in the ledger transaction), "
            f"{c.workers} workers × -c {c.concurrency}, {c.partitions} partitions, "
            + ("a ledger file per worker (separate hosts)" if c.hosts else "one shared ledger file"),
            f"chaos: {kinds['kill-worker']} worker kill -9, {kinds['kill-child']} child kill -9, "
            f"{kinds['broker-restart']} broker restart(s) "
            + ", ".join(f"{e.kind}@{e.done_before}" + (f" ({e.duration_s:.1f} s)" if e.duration_s else "")
                        for e in self.events),
            f"finished: {self.finished} in {self.drain_s:.1f} s from the end of enqueueing "
            f"({self.elapsed_s:.1f} s in all)",
            f"lost: plain {len(self.plain_missing)}, ledger-transaction {len(self.tx_missing)}",
            f"duplicates: plain {self.plain_duplicates} (bound: {self.in_flight_bound} in flight at the kills), "
            f"ledger-transaction {self.tx_duplicates}; ran again after their success was on the changelog: "
            f"{len(self.ran_after_acknowledged)}" + ("" if self.changelog_checked else " (changelog not read)"),
            "plain duplicates by kill: " + (", ".join(f"{e.kind}@{e.done_before}: {e.duplicates}"
                                                      for e in self.events if e.kind != "broker-restart") or "-"),
            f"dead-lettered records: {self.dead_lettered}; consumer lag left: {self.lag_left}; "
            f"worker processes started: {self.worker_incarnations}; child deaths logged: {self.child_deaths_logged}; "
            f"'offset commit failed' logged: {self.commit_failures_logged} "
            f"({self.rebalance_commit_failures} with RebalanceInProgressError)",
        ]
        problems = self.problems()
        lines.append("result: " + ("PASS" if not problems else "FAIL: " + "; ".join(problems)))
        return "\n".join(lines)


def worker_env(settings: dict[str, Any], plain_db: Path) -> dict[str, str]:
    """The environment of the workers: the app's settings as ``KTASKS_*`` variables."""
    env = dict(os.environ)
    env.pop("KTASKS_FAULTS", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")]))
    env["CHAOS_EFFECTS_DB"] = str(plain_db)
    for key, value in settings.items():
        env["KTASKS_" + key.upper()] = json.dumps(value) if isinstance(value, list) else str(value)
    return env


def _wait(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.1) -> T | None:
    """Poll ``predicate`` until truthy (returned) or ``timeout_s`` passed (None)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            return None
        time.sleep(interval_s)


class Fleet:
    """The workers of a run: start, kill, restart, stop; each incarnation logs to its own file."""

    def __init__(self, workdir: Path, env: dict[str, str], config: ChaosConfig) -> None:
        self.workdir = workdir
        self.env = env
        self.config = config
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logs: list[Path] = []
        self.started = 0
        self._rebalances = -1
        self._rebalance_seen = time.monotonic()

    def _place(self, slot: int) -> tuple[Path, dict[str, str]]:
        """Working directory and environment of the worker in ``slot``.

        With ``hosts``, each slot stands for a host: a working directory and a
        ledger file of its own, kept across the worker's restarts. Otherwise all
        are alike: one host.
        """
        if not self.config.hosts:
            return ROOT, self.env
        host_dir = self.workdir / f"host-{slot}"
        host_dir.mkdir(exist_ok=True)
        return host_dir, dict(self.env, KTASKS_LEDGER_PATH=str(host_dir / "ledger.sqlite3"))

    def _spawn(self, slot: int) -> subprocess.Popen[bytes]:
        self.started += 1
        log = self.workdir / f"worker-{slot}-{self.started}.log"
        self.logs.append(log)
        cwd, env = self._place(slot)
        with open(log, "wb") as f:
            return subprocess.Popen(
                [str(BIN / "ktasks"), "worker", "-A", "benchmarks.peerapps.chaos_app:app",
                 "-c", str(self.config.concurrency), "--loglevel", self.config.loglevel],
                cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def start(self) -> None:
        self.procs = [self._spawn(i) for i in range(self.config.workers)]

    def children(self, slot: int) -> list[int]:
        """Pids of the pool children of a worker (not multiprocessing's resource tracker)."""
        return [p for p in procs.children(self.procs[slot].pid) if "spawn_main" in procs.cmdline(p)]

    def kill_worker(self, slot: int) -> list[int]:
        """``kill -9`` a worker, wait for it, start it again; returns the pids that died."""
        proc = self.procs[slot]
        pids = [proc.pid, *self.children(slot)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
        self.procs[slot] = self._spawn(slot)
        return pids

    def kill_child(self, rng: random.Random) -> int | None:
        """``kill -9`` a random child of a random worker; its pid, or None if no worker has one yet."""
        slots = [i for i in range(len(self.procs)) if self.children(i)]
        if not slots:
            return None
        pid = rng.choice(self.children(rng.choice(slots)))
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return pid

    def settled(self) -> bool:
        """Every worker logged an assignment, and none logged a rebalance for the last second."""
        texts = [log.read_text(errors="replace") for log in self.logs[-len(self.procs):]]
        if not all("partitions assigned:" in t for t in texts):
            return False
        count = sum(t.count("partitions assigned:") + t.count("partitions revoked:") for t in texts)
        now = time.monotonic()
        if count != self._rebalances:
            self._rebalances, self._rebalance_seen = count, now
        return now - self._rebalance_seen >= 1.0

    def dead(self) -> list[int]:
        return [i for i, p in enumerate(self.procs) if p.poll() is not None]

    def stop(self, timeout_s: float = 60.0) -> list[int | None]:
        """Warm shutdown of every worker at once (one SIGTERM each); SIGKILL what outlives ``timeout_s``."""
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout_s
        codes: list[int | None] = []
        for p in self.procs:
            try:
                codes.append(p.wait(max(0.1, deadline - time.monotonic())))
            except subprocess.TimeoutExpired:
                procs.kill_tree(p.pid)
                codes.append(None)
        return codes


class Progress:
    """Waits for the count of finished tasks, giving up at the deadline or when it stalls."""

    def __init__(self, effects: Effects, deadline: float, stall_s: float) -> None:
        self.effects = effects
        self.deadline = deadline
        self.stall_s = stall_s
        self.stalled = False
        self._last = -1
        self._since = time.monotonic()

    def touch(self) -> None:
        """Restart the stall clock (after a pause the harness caused itself)."""
        self._since = time.monotonic()

    def reach(self, target: int) -> bool:
        """True once ``target`` tasks have an effect; False at the deadline or after a stall."""
        while True:
            done = self.effects.done()
            now = time.monotonic()
            if done != self._last:
                self._last, self._since = done, now
            if done >= target:
                return True
            if now > self.deadline:
                return False
            if now - self._since > self.stall_s:
                self.stalled = True
                return False
            time.sleep(0.05)


class Effects:
    """Reads the effect tables back: the plain file, and the table in every ledger file (one per host)."""

    def __init__(self, plain_db: Path, ledger_dbs: list[Path]) -> None:
        self.plain_db = plain_db
        self.ledger_dbs = ledger_dbs

    @staticmethod
    def _rows(path: Path, table: str, what: str) -> list[tuple[Any, ...]]:
        if not path.exists():
            return []
        con = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            return con.execute(f"SELECT {what} FROM {table}").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            con.close()

    def done(self) -> int:
        """Tasks with at least one effect."""
        plain = self._rows(self.plain_db, PLAIN_TABLE, "count(DISTINCT n)")
        return (plain[0][0] if plain else 0) + len({n for n, _, _ in self.tx()})

    def plain(self) -> list[tuple[int, int, float]]:
        return [tuple(r) for r in self._rows(self.plain_db, PLAIN_TABLE, "n, pid, ts")]  # type: ignore[misc]

    def tx(self) -> list[tuple[int, int, float]]:
        return [tuple(r) for db in self.ledger_dbs  # type: ignore[misc]
                for r in self._rows(db, TX_TABLE, "n, pid, ts")]


def ledger_files(workdir: Path, hosts: int) -> list[Path]:
    """The ledger file of each host (``hosts`` 0: one file all workers share), created with its schema."""
    from ktasks.ledger import Ledger

    paths = ([workdir / f"host-{i}" / "ledger.sqlite3" for i in range(hosts)] if hosts
             else [workdir / "ledger.sqlite3"])
    for path in paths:
        path.parent.mkdir(exist_ok=True)
        Ledger(path).close()   # the schema exists before the workers race to create it
    return paths


@contextlib.contextmanager
def _broker(bootstrap: str | None, workdir: Path, need_restart: bool) -> Iterator[tuple[str, Any]]:
    if bootstrap:
        if need_restart:
            raise ValueError("a broker restart needs the run's own broker: give no bootstrap")
        yield bootstrap, None
        return
    from ktasks.dev import DevBroker, free_port

    broker = DevBroker(port=free_port(), state_dir=workdir / "kafka")
    broker.up(timeout_s=180)
    try:
        yield broker.bootstrap, broker
    finally:
        broker.down(wipe=True)


def _lag(bootstrap: str, group: str, topics: list[str]) -> int | None:
    """Records of ``topics`` not yet committed by ``group`` (None if it cannot be read now)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="chaos-lag")
        consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="chaos-lag")
    except Exception:
        return None
    try:
        committed = admin.list_group_offsets({group: None}).get(group, {})
        tps = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or ())]
        ends = consumer.end_offsets(tps)
        lag = 0
        for tp in tps:
            om = committed.get(tp)
            lag += ends.get(tp, 0) - (om.offset if om is not None and om.offset >= 0 else 0)
        return lag
    except Exception:
        return None
    finally:
        consumer.close()
        admin.close()


def _topic_size(bootstrap: str, topic: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="chaos-size")
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        return sum(consumer.end_offsets([TopicPartition(topic, p) for p in parts]).values())
    finally:
        consumer.close()


def _changelog_successes(bootstrap: str, topic: str) -> Counter[str]:
    """How many success records the ledger changelog of ``topic`` holds, per ledger key."""
    from kafka import KafkaConsumer, TopicPartition

    from ktasks.ledger import SUCCEEDED
    from ktasks.ledger_restore import decode_all

    changelog = topic + ".ledger"
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, client_id="chaos-changelog", enable_auto_commit=False)
    counts: Counter[str] = Counter()
    try:
        tps = [TopicPartition(changelog, p) for p in consumer.partitions_for_topic(changelog) or ()]
        if not tps:
            return counts
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        ends = consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any(consumer.position(tp) < ends[tp] for tp in tps) and time.monotonic() < deadline:
            for records in consumer.poll(500).values():
                for r in records:
                    with contextlib.suppress(Exception):
                        for t in decode_all(r.key, r.value):
                            if t.state == SUCCEEDED:
                                counts[t.key] += 1
        return counts
    finally:
        consumer.close()


def _schedule(config: ChaosConfig, rng: random.Random) -> list[tuple[float, str]]:
    """``(fraction of tasks done, kind)`` for every event, evenly spread over 10%..80%."""
    kinds = [("kill-worker", "kill-child")[i % 2] for i in range(config.kills)]
    rng.shuffle(kinds)
    if config.broker_restart:
        kinds.insert(len(kinds) // 2, "broker-restart")
    count = len(kinds)
    return [(0.1 + 0.7 * (i + 1) / (count + 1), kind) for i, kind in enumerate(kinds)]


def run(config: ChaosConfig, workdir: Path, bootstrap: str | None = None,
        log: Callable[[str], None] = print) -> ChaosResult:
    """Run the chaos scenario in ``workdir`` (kept: logs and databases stay there for inspection)."""
    from ktasks import App

    started = time.monotonic()
    rng = random.Random(config.seed)
    result = ChaosResult(config, workdir=str(workdir))
    tag = uuid.uuid4().hex[:8]
    topic, group = f"chaos-{tag}", f"chaos-{tag}-group"
    plain_db = workdir / "effects.sqlite3"
    con = sqlite3.connect(plain_db, isolation_level=None)
    con.execute("PRAGMA journal_mode = WAL")
    con.execute(f"CREATE TABLE IF NOT EXISTS {PLAIN_TABLE} (n INTEGER, pid INTEGER, ts REAL)")
    con.close()
    ledgers = ledger_files(workdir, config.workers if config.hosts else 0)
    effects = Effects(plain_db, ledgers)
    successes: Counter[str] = Counter()
    with _broker(bootstrap, workdir, config.broker_restart) as (servers, broker):
        settings: dict[str, Any] = {
            "bootstrap_servers": servers, "default_topic": topic, "group_id": group,
            "partitions": config.partitions, "ledger_path": str(ledgers[0]),
            "session_timeout_ms": config.session_timeout_ms, "heartbeat_interval_ms": config.heartbeat_interval_ms,
            "retry_backoff_ms": 200, "retry_tiers_ms": [200, 1000, 5000],
            "prefetch_per_partition": config.prefetch_per_partition,
            "ledger_changelog_max_unacked": config.max_unacked,
        }
        env = worker_env(settings, plain_db)
        fleet = Fleet(workdir, env, config)
        try:
            if config.warm_start:
                fleet.start()
                if not _wait(fleet.settled, 120, 0.1):
                    log("workers did not settle in the group within 120 s; enqueueing anyway")
            log(f"enqueueing {config.n} tasks to {topic} on {servers}")
            app = App("chaos", **settings)
            try:
                for i in range(config.n):
                    # Task ids name the task's number: the changelog check below looks them up.
                    if i % 2:
                        app.send_task("chaos.tx", (i,), task_id=f"chaos-{i}")
                        result.tx_expected += 1
                    else:
                        app.send_task("chaos.plain", (i, round(rng.uniform(0, config.plain_sleep_ms), 2)),
                                      task_id=f"chaos-{i}")
                        result.plain_expected += 1
                app.flush(60)
            finally:
                app.close()
            t0 = time.monotonic()
            deadline = t0 + config.deadline_s
            if not config.warm_start:
                fleet.start()
            progress = Progress(effects, deadline, config.stall_s)
            for fraction, kind in _schedule(config, rng):
                if not progress.reach(int(fraction * config.n)):
                    break
                event = Event(kind, time.monotonic() - t0, effects.done())
                if kind == "kill-worker":
                    slot = rng.randrange(len(fleet.procs))
                    event.pids = fleet.kill_worker(slot)
                    # Across hosts, also what finished there without an acknowledged changelog
                    # record, which the worker keeps under ledger_changelog_max_unacked.
                    event.in_flight_bound = config.max_unacked if config.hosts else config.concurrency
                elif kind == "kill-child":
                    pid = _wait(lambda: fleet.kill_child(rng), 30, 0.05)
                    if pid is None:
                        log("no child to kill within 30 s")
                        continue
                    event.pids = [pid]
                    event.in_flight_bound = 1
                else:
                    t_down = time.monotonic()
                    broker.down(timeout_s=60)
                    broker.up(timeout_s=180)
                    event.duration_s = time.monotonic() - t_down
                    progress.touch()
                result.events.append(event)
                log(f"{event.at_s:6.1f} s  {kind}{' ' + str(event.pids) if event.pids else ''} at "
                    f"{event.done_before}/{config.n} done" + (f", back after {event.duration_s:.1f} s"
                                                              if event.duration_s else ""))
            result.finished = progress.reach(config.n)
            result.stalled = progress.stalled
            result.drain_s = time.monotonic() - t0
            log(f"{effects.done()}/{config.n} done after {result.drain_s:.1f} s")
            # Let the workers commit everything, so no redelivery is still to come when we count.
            topics = [topic] + [f"{topic}.retry-{t}ms" for t in settings["retry_tiers_ms"]]
            committed = _wait(lambda: _lag(servers, group, topics) == 0, 60.0 if result.finished else 5.0, 0.5)
            result.lag_left = 0 if committed else _lag(servers, group, topics)
            codes = fleet.stop()
            result.exit_codes = codes
            log(f"workers stopped: exit codes {codes}")
            result.dead_lettered = _topic_size(servers, topic + ".DLT")
            successes = _changelog_successes(servers, topic)
        finally:
            for p in fleet.procs:
                if p.poll() is None:
                    procs.kill_tree(p.pid)
    _count(result, effects, config)
    # A task whose first success reached the changelog was finished for every host: running it
    # again is a breach, whatever the bound. (A killed worker writes nothing after its kill, and
    # the next owner restores after it, so two success records mean the second run saw the first.)
    result.changelog_checked = bool(successes)
    duplicated = {n for n, c in Counter(n for n, _, _ in effects.plain() + effects.tx()).items() if c > 1}
    result.ran_after_acknowledged = sorted(n for n in duplicated if successes.get(f"chaos-{n}", 0) > 1)
    result.worker_incarnations = fleet.started
    logs = [path.read_text(errors="replace") for path in fleet.logs]
    result.child_deaths_logged = sum(text.count(") died (") for text in logs)
    failures = [line for text in logs for line in text.splitlines() if "offset commit failed for" in line]
    result.commit_failures_logged = len(failures)
    result.rebalance_commit_failures = sum("RebalanceInProgressError" in line for line in failures)
    result.elapsed_s = time.monotonic() - started
    return result


def _count(result: ChaosResult, effects: Effects, config: ChaosConfig) -> None:
    plain, tx = effects.plain(), effects.tx()
    result.plain_rows, result.tx_rows = len(plain), len(tx)
    plain_counts = Counter(n for n, _, _ in plain)
    tx_counts = Counter(n for n, _, _ in tx)
    result.plain_missing = sorted(set(range(0, config.n, 2)) - set(plain_counts))
    result.tx_missing = sorted(set(range(1, config.n, 2)) - set(tx_counts))
    result.plain_duplicates = sum(c - 1 for c in plain_counts.values())
    result.tx_duplicates = sum(c - 1 for c in tx_counts.values())
    result.in_flight_bound = sum(e.in_flight_bound for e in result.events)
    # Attribute each plain duplicate to the kill whose processes wrote its first copy.
    first: dict[int, tuple[float, int]] = {}
    for n, pid, ts in sorted(plain, key=lambda r: r[2]):
        first.setdefault(n, (ts, pid))
    by_pid = Counter(first[n][1] for n, c in plain_counts.items() if c > 1 for _ in range(c - 1))
    for event in result.events:
        event.duplicates = sum(by_pid.get(pid, 0) for pid in event.pids)
    last_by_pid: dict[int, float] = {}
    for _, pid, ts in plain + tx:
        last_by_pid[pid] = max(ts, last_by_pid.get(pid, ts))
    firsts = {}
    for n, pid, ts in sorted(plain + tx, key=lambda r: r[2]):
        firsts.setdefault(n, (ts, pid))
    counts = Counter(n for n, _, _ in plain + tx)
    result.duplicate_age_ms = max((1000 * (last_by_pid[firsts[n][1]] - firsts[n][0])
                                   for n, c in counts.items() if c > 1), default=0.0)


def section_title(config: ChaosConfig) -> str:
    """The docs section of a run: the shared-ledger run and the one with hosts each have theirs."""
    return SECTION + (f" ({config.workers} hosts)" if config.hosts else "")


def render(result: ChaosResult, command: str) -> str:
    """The docs section for one run."""
    c = result.config
    kinds = Counter(e.kind for e in result.events)
    problems = result.problems()
    rows = "\n".join(
        f"| {e.at_s:.1f} | {e.kind} | {e.done_before:,} | {e.in_flight_bound or '–'} | "
        + (f"{e.duplicates}" if e.kind != "broker-restart" else f"down and up in {e.duration_s:.1f} s")
        + " |" for e in result.events)
    return (
        f"## {section_title(c)}\n\n"
        f"{c.n:,} tasks: {result.plain_expected:,} plain ones (sleep 0–{c.plain_sleep_ms:g} ms, then an INSERT "
        f"into a separate SQLite file, outside the ledger) and {result.tx_expected:,} that INSERT through "
        "`ctx.ledger` (`ledger_transaction=True`: the write commits with the success record). "
        f"{c.workers} workers with `-c {c.concurrency}` on {c.partitions} partitions"
        + (", each with its own ledger file and working directory (separate hosts; `ledger_changelog` on)"
           if c.hosts else ", sharing one ledger file")
        + " "
        f"(session {c.session_timeout_ms} ms, `prefetch_per_partition` {c.prefetch_per_partition}); "
        + ("the workers join the group, then all tasks are enqueued"
           if c.warm_start
           else "all tasks enqueued before the workers start")
        + "; at evenly spread points of progress: "
        f"{kinds['kill-worker']} `kill -9` of a random worker (started again at once), {kinds['kill-child']} "
        f"`kill -9` of a random child, {kinds['broker-restart']} broker restart with its data kept. "
        "Tables have no unique keys, so duplicates stay visible.\n\n"
        f"- Command: `{command}`\n"
        f"- Drained in {result.drain_s:.1f} s ("
        + ("from the end of enqueueing" if c.warm_start else "from the workers' start")
        + f"); {result.worker_incarnations} worker "
        f"processes started in all; {result.child_deaths_logged} child deaths logged by the workers\n"
        f"- Lost: **{len(result.plain_missing)}** plain, **{len(result.tx_missing)}** ledger-transaction\n"
        f"- Duplicates: ledger-transaction **{result.tx_duplicates}**; plain **{result.plain_duplicates}**, "
        + (f"together against a bound of {result.in_flight_bound} (`ledger_changelog_max_unacked` = "
           f"{c.max_unacked} per killed worker: tasks running or finished without an acknowledged changelog "
           "record; 1 per killed child); " if c.hosts else
           f"against a bound of {result.in_flight_bound} tasks running at the kills (`-c` per killed worker "
           "+ 1 per killed child); ")
        +
        f"ran again although their success was on the ledger changelog: **{len(result.ran_after_acknowledged)}**"
        + ("" if result.changelog_checked else " (changelog not read)")
        + f"; a duplicate's first copy was written at most {result.duplicate_age_ms:.0f} ms before its "
        "process was killed\n"
        f"- Dead-lettered: {result.dead_lettered}; consumer lag at the end: {result.lag_left}; "
        f"\"offset commit failed\" logged {result.commit_failures_logged} times\n"
        f"- Result: **{'pass' if not problems else 'FAIL: ' + '; '.join(problems)}**\n\n"
        "| at, s | event | tasks done before | in-flight bound | plain duplicates whose first copy the "
        "killed processes wrote |\n|---:|---|---:|---:|---|\n" + rows + "\n"
        + "".join(_notes(result))
    )


def _notes(result: ChaosResult) -> list[str]:
    """Explanations of known findings, added to the docs section when the run shows them."""
    notes = []
    if result.plain_duplicates > result.in_flight_bound:
        notes.append(
            "\nMore plain duplicates than tasks in flight: a child runs the batch of records its worker "
            "hands it and reports the results (making their ledger success records durable first) at the "
            "end of the batch or every 50 ms (`RESULT_FLUSH_S`), so a killed child takes with it the "
            "success records of the tasks it finished since its last report; they run again. The table "
            "attributes each duplicate to the kill whose processes wrote its first copy. Effects written in "
            "the ledger transaction are unaffected (their success commits with them).\n")
    if result.rebalance_commit_failures:
        notes.append(
            f"\nThe workers logged {result.rebalance_commit_failures} offset commit(s) failing with "
            "`RebalanceInProgressError` (a commit while the group rebalances, after a worker joined). The "
            "worker treats that error as fatal: it dead-letters its finished, uncommitted records with "
            "reason `commit-failed` (most of the dead-lettered records above; their tasks did run) and "
            "resubscribes.\n")
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=None, help="tasks (default 10000; 4000 with --brokers 3)")
    parser.add_argument("--workers", type=int, default=3, help="workers, -c 2 each (default 3)")
    parser.add_argument("--kills", type=int, default=6, help="worker and child kills, alternating (default 6)")
    parser.add_argument("--no-broker-restart", action="store_true", help="skip the broker restart")
    parser.add_argument("--cold-start", action="store_true",
                        help="enqueue before the workers start (default: they join the group first)")
    parser.add_argument("--seed", type=int, default=None, help="random seed (default: random)")
    parser.add_argument("--deadline", type=float, default=480.0, help="longest run, s (default 480)")
    parser.add_argument("--bootstrap", help="use this broker (only with --no-broker-restart)")
    parser.add_argument("--workdir", type=Path, help="keep logs and databases here (default: a temp dir)")
    parser.add_argument("--brokers", type=int, choices=(1, 3), default=1,
                        help="3: a 3-node cluster of its own, killing a partition leader, the group coordinator "
                             "and the active controller while tasks are enqueued (benchmarks.chaos_cluster)")
    parser.add_argument("--hosts", type=int, default=0,
                        help="this many workers (instead of --workers), each with its own ledger file and "
                             "working directory, as separate hosts")
    parser.add_argument("--max-unacked", type=int, default=500,
                        help="ledger_changelog_max_unacked of the workers (default 500, the setting's default)")
    parser.add_argument("--json", action="store_true", help="also print the result as JSON")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the figures into this markdown file")
    args = parser.parse_args(argv)
    if args.brokers == 3:
        return _main_cluster(args, argv)
    seed = args.seed if args.seed is not None else random.randrange(1 << 30)
    config = ChaosConfig(n=args.n or 10_000, workers=args.hosts or args.workers, hosts=bool(args.hosts), kills=args.kills, broker_restart=not args.no_broker_restart,
                         seed=seed, deadline_s=args.deadline, warm_start=not args.cold_start,
                         max_unacked=args.max_unacked)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos run, seed {seed}, workdir {workdir}", flush=True)
    result = run(config, workdir, args.bootstrap, log=lambda s: print(s, flush=True))
    print()
    print(result.summary())
    if args.json:
        print(json.dumps(asdict(result), default=str))
    if args.write:
        from benchmarks.report import write_section

        command = "python -m benchmarks.chaos " + " ".join(sys.argv[1:] if argv is None else argv)
        if "--seed" not in command:
            command += f" (seed {seed})"
        write_section(args.write, render(result, command), section_title(config))
        print(f"wrote {args.write}")
    return 0 if not result.problems() else 1


def _main_cluster(args: argparse.Namespace, argv: list[str] | None) -> int:
    from benchmarks import chaos_cluster

    config = chaos_cluster.ClusterChaosConfig(n=args.n or 4000, hosts=args.hosts,
                                              deadline_s=args.deadline)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="chaos-cluster-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"chaos run on 3 brokers, workdir {workdir}", flush=True)
    result = chaos_cluster.run(config, workdir, log=lambda s: print(s, flush=True))
    print()
    print(result.summary())
    if args.write:
        from benchmarks.report import write_section

        command = "python -m benchmarks.chaos " + " ".join(sys.argv[1:] if argv is None else argv)
        section = chaos_cluster.SECTION + (f" ({config.hosts} hosts)" if config.hosts else "")
        write_section(args.write, chaos_cluster.render(result, command), section)
        print(f"wrote {args.write}")
    return 0 if not result.problems() else 1


if __name__ == "__main__":
    sys.exit(main())
