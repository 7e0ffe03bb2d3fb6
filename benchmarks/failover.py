"""Failover time: how long the partitions of a dead (or stopping) worker stand still.

Not a test. Two ``ktasks worker -c 2`` on a 2-partition task topic, with a
steady flow of tasks on both partitions. Once both workers run and both
partitions make progress, one worker (the owner of partition 0) is sent
``SIGKILL`` or ``SIGTERM``; the figure is the time from the signal until the
first completion, by the other worker, on a task partition the first one
owned. After ``kill -9`` that wait is bounded below by the consumer session
timeout, so it runs at the default (10000 ms) and at a short 3000 ms::

    python -m benchmarks.failover --write docs/performance.md

Each case runs ``--reps`` times with fresh workers, topic and group.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from kafka.partitioner.default import murmur2

from benchmarks.peerapps import procs
from benchmarks.peerapps.failover_app import RECORD

SECTION = "Failover time"
ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent

#: (session_timeout_ms, heartbeat_interval_ms): ktasks' default, and a short session.
SESSIONS = ((10000, 1000), (3000, 300))


def key_for_partition(partition: int, partitions: int) -> str:
    """A key that kafka's default partitioner (murmur2) puts on ``partition``."""
    for i in range(100_000):
        key = f"k{i}"
        if (murmur2(key.encode()) & 0x7FFFFFFF) % partitions == partition:
            return key
    raise RuntimeError("no key found")


def read_records(path: Path) -> list[tuple[int, int, float]]:
    """``(partition, worker pid, completed_at)`` of every completion so far."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    return [RECORD.unpack_from(data, i * RECORD.size) for i in range(len(data) // RECORD.size)]


@dataclass
class Case:
    """One measurement."""

    signal_name: str
    session_ms: int
    heartbeat_ms: int
    seconds: float | None = None
    error: str | None = None
    victim_partitions: list[int] = field(default_factory=list)


class Flow(threading.Thread):
    """Enqueues ``rate`` tasks/s, alternating between the two partitions, until stopped."""

    def __init__(self, app: object, rate: float) -> None:
        super().__init__(name="flow", daemon=True)
        self.app = app
        self.rate = rate
        self.keys = [key_for_partition(0, 2), key_for_partition(1, 2)]
        self.sent = 0
        self.error: BaseException | None = None
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        try:
            while not self._stop_event.is_set():
                delay = start + self.sent / self.rate - time.monotonic()
                if delay > 0 and self._stop_event.wait(delay):
                    break
                self.app.send_task("failover.tick", (self.sent,),  # type: ignore[attr-defined]
                                   key=self.keys[self.sent % 2])
                self.sent += 1
        except BaseException as exc:  # reported by the harness
            self.error = exc

    def stop(self) -> None:
        self._stop_event.set()
        self.join(10)


def _settled(records: list[tuple[int, int, float]], pids: set[int], window_s: float = 1.0) -> dict[int, int] | None:
    """Owner pid of each partition if both progressed in the last ``window_s``, each by one worker."""
    now = time.time()
    recent = [(p, pid) for p, pid, t in records if t > now - window_s]
    owners: dict[int, set[int]] = {}
    for p, pid in recent:
        owners.setdefault(p, set()).add(pid)
    if set(owners) != {0, 1} or any(len(o) != 1 or not o <= pids for o in owners.values()):
        return None
    return {p: next(iter(o)) for p, o in owners.items()}


def measure(bootstrap: str, tmp: Path, sig: signal.Signals, session_ms: int, heartbeat_ms: int, rate: float,
            timeout_s: float = 90.0) -> Case:
    """One failover: start two workers, wait for steady progress, signal one, time the takeover."""
    from ktasks import App

    case = Case(sig.name, session_ms, heartbeat_ms)
    tag = uuid.uuid4().hex[:8]
    topic = f"bench-failover-{tag}"
    out = tmp / f"{tag}.records"
    env = dict(os.environ)
    env.pop("KTASKS_FAULTS", None)
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH", "")])),
               BENCH_OUT=str(out), KTASKS_BOOTSTRAP_SERVERS=bootstrap, KTASKS_DEFAULT_TOPIC=topic,
               KTASKS_GROUP_ID=topic + "-group", KTASKS_PARTITIONS="2",
               KTASKS_LEDGER_PATH=str(tmp / f"{tag}.ledger.sqlite3"),
               KTASKS_SESSION_TIMEOUT_MS=str(session_ms), KTASKS_HEARTBEAT_INTERVAL_MS=str(heartbeat_ms))
    app = App("benchfailover", bootstrap_servers=bootstrap, default_topic=topic, partitions=2)
    app.ensure_topics([topic], partitions=2)
    workers: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []
    flow = Flow(app, rate)
    try:
        for i in range(2):
            logs.append(tmp / f"{tag}-w{i}.log")
            with open(logs[-1], "wb") as f:
                workers.append(subprocess.Popen(
                    [str(BIN / "ktasks"), "worker", "-A", "benchmarks.peerapps.failover_app:app", "-c", "2",
                     "--loglevel", "INFO"], cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL))
        flow.start()
        pids = {w.pid for w in workers}
        deadline = time.monotonic() + timeout_s
        owners = None
        while owners is None:
            if time.monotonic() > deadline or flow.error or any(w.poll() is not None for w in workers):
                case.error = f"never settled (flow error {flow.error!r})"
                return case
            # Both in the group, no rebalance for 2 s, both partitions progressing.
            joined = all("partitions assigned:" in log.read_text(errors="replace") for log in logs)
            owners = _settled(read_records(out), pids) if joined and _no_rebalance_for(logs, 2.0) else None
            time.sleep(0.1)
        victim_pid = owners[0]
        case.victim_partitions = sorted(p for p, pid in owners.items() if pid == victim_pid)
        survivor_pid = next(pid for pid in pids if pid != victim_pid)
        victim = next(w for w in workers if w.pid == victim_pid)
        t_signal = time.time()
        victim.send_signal(sig)
        while True:
            hit = [t for p, pid, t in read_records(out)
                   if pid == survivor_pid and p in case.victim_partitions and t > t_signal]
            if hit:
                case.seconds = min(hit) - t_signal
                break
            if time.monotonic() > deadline + 60:
                case.error = "no progress on the victim's partitions within the deadline"
                break
            time.sleep(0.005)
    finally:
        flow.stop()
        for w in workers:
            procs.stop_process(w, 30)
        app.close()
    return case


def _no_rebalance_for(logs: list[Path], seconds: float) -> bool:
    """True if no worker log mentioned an assignment or revocation in the last ``seconds``."""
    for log in logs:
        last = 0.0
        for line in log.read_text(errors="replace").splitlines():
            if "partitions assigned:" in line or "partitions revoked:" in line:
                last = max(last, _rebalance_seen.setdefault((str(log), line), time.time()))
        if time.time() - last < seconds:
            return False
    return True


#: When this harness first saw each rebalance log line (the log's own timestamps have 1 s resolution).
_rebalance_seen: dict[tuple[str, str], float] = {}


def render(cases: list[Case], reps: int, rate: float, command: str) -> str:
    lines = [f"## {SECTION}\n",
             "Two `ktasks worker -c 2` on a 2-partition topic, a steady flow of "
             f"{rate:g} tasks/s spread over both partitions. When both workers run and both partitions make "
             "progress, the owner of partition 0 is sent `SIGKILL` or `SIGTERM`; the time is from the signal "
             "to the first completion, by the other worker, on a task partition the first one owned. "
             f"{reps} runs per case, fresh workers, topic and group each time; median (min–max).\n",
             f"- Command: `{command}`\n",
             "| signal | session_timeout_ms / heartbeat_interval_ms | failover, s: median (min–max) | runs |",
             "|---|---|---:|---|"]
    for sig in ("SIGKILL", "SIGTERM"):
        for session_ms, heartbeat_ms in SESSIONS:
            mine = [c for c in cases if c.signal_name == sig and c.session_ms == session_ms]
            ok = [c.seconds for c in mine if c.seconds is not None]
            cell = (f"{statistics.median(ok):.2f} ({min(ok):.2f}–{max(ok):.2f})" if ok else "–")
            runs = ", ".join(f"{c.seconds:.2f}" if c.seconds is not None else f"failed: {c.error}" for c in mine)
            lines.append(f"| `{sig}` | {session_ms} / {heartbeat_ms} | {cell} | {runs} |")
    lines.append("")
    lines.append("After `kill -9` the group waits for the session timeout, counted from the dead worker's last "
                 "heartbeat, before it gives its partitions away, so that case cannot beat `session_timeout_ms` "
                 "minus one heartbeat interval; the rest is the rebalance and the survivor's first poll. A `SIGTERM` is a warm shutdown: the worker finishes its in-flight "
                 "tasks, commits and leaves the group, which rebalances at once; the survivor hears of the "
                 "rebalance with its next heartbeat, so there `heartbeat_interval_ms` sets the time, not the "
                 "session timeout. ktasks' default `session_timeout_ms` is 10000 (Kafka's client default is "
                 "45000); the broker's `group.min.session.timeout.ms` (6000 by default; the dev broker sets "
                 "500) bounds how short it can be.\n")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from benchmarks.peers import kafka
    from benchmarks.report import write_section

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=3, help="runs per case (default 3)")
    parser.add_argument("--rate", type=float, default=100.0, help="tasks/s of the steady flow (default 100)")
    parser.add_argument("--bootstrap", help="Kafka to use (default: KTASKS_BOOTSTRAP_SERVERS, else start one)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the results into this markdown file")
    args = parser.parse_args(argv)
    cases: list[Case] = []
    with tempfile.TemporaryDirectory(prefix="bench-failover-") as tmp_name:
        tmp = Path(tmp_name)
        with kafka(args.bootstrap, tmp) as (bootstrap, _):
            for sig in (signal.SIGKILL, signal.SIGTERM):
                for session_ms, heartbeat_ms in SESSIONS:
                    for rep in range(args.reps):
                        case = measure(bootstrap, tmp, sig, session_ms, heartbeat_ms, args.rate)
                        cases.append(case)
                        shown = f"{case.seconds:.2f} s" if case.seconds is not None else f"failed: {case.error}"
                        print(f"{sig.name} session {session_ms} ms run {rep + 1}: {shown} "
                              f"(partitions {case.victim_partitions})", flush=True)
    command = "python -m benchmarks.failover " + " ".join(sys.argv[1:] if argv is None else argv)
    section = render(cases, args.reps, args.rate, command)
    print()
    print(section)
    if args.write:
        write_section(args.write, section, SECTION)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
