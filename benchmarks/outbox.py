"""Outbox: commit-to-start latency with LISTEN/NOTIFY, and the relay's throughput.

Not a test. Against a real PostgreSQL (a throwaway server from the machine's
binaries, as the tests start it, unless ``--dsn`` names one) and a Kafka broker
(its own dev broker unless ``--bootstrap``):

* **Latency**: ``ktasks worker -c 2 --relay DSN`` runs; one writer commits
  ``--latency-rows`` transactions at ``--rate`` per second, each writing one
  outbox row. Latency is from the writer's commit returning to the task's
  first line running in a worker child (both clocks on this machine).
* **Throughput**: ``ktasks relay`` runs alone and idle; ``--rows`` rows are
  committed in one transaction; the rate is rows over the time from that
  commit until the outbox is empty (every row published with ``acks=all``
  and deleted).

::

    python -m benchmarks.outbox
    python -m benchmarks.outbox --write docs/performance.md
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg

from benchmarks.report import write_section

SECTION = "Outbox relay"
BASE = 1_000_000  # task numbers of the baseline (plain delay()) run

APP = '''
import time
from ktasks import App

app = App({name!r}, bootstrap_servers={bootstrap!r}, default_topic={topic!r}, group_id={group!r},
          ledger_path={ledger!r}, partitions=4)

@app.task(name="bench.started")
def started(i):
    with open({out!r}, "a") as f:
        f.write(f"{{i}} {{time.time()}}\\n")

@app.task(name="bench.noop")
def noop(i):
    pass
'''


def _free_port(low: int = 25000, high: int = 25999) -> int:
    for port in range(low, high):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {low}-{high}")


@contextlib.contextmanager
def _broker(bootstrap: str | None, workdir: Path) -> Iterator[str]:
    if bootstrap:
        yield bootstrap
        return
    from ktasks.dev import DevBroker

    broker = DevBroker(port=_free_port(), state_dir=workdir / "kafka")
    broker.up(timeout_s=180)
    try:
        yield broker.bootstrap
    finally:
        broker.down(wipe=True)


@contextlib.contextmanager
def _database(dsn: str | None) -> Iterator[str]:
    if dsn:
        yield dsn
        return
    from tests.fixtures.postgres import PostgresServer

    server = PostgresServer().start()
    try:
        yield server.dsn(server.create_database("outbox_bench"))
    finally:
        server.stop()


def _spawn(workdir: Path, log: Path, *args: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(workdir), os.environ.get("PYTHONPATH", "")]))
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "ktasks", *args], cwd=workdir, env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)


def _wait(predicate: object, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _count(dsn: str) -> int:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM ktasks_outbox").fetchone()
        return int(row[0]) if row else 0


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def run(bootstrap: str, dsn: str, workdir: Path, latency_rows: int, rate: float, rows: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:8]
    out = workdir / "started.txt"
    (workdir / "bench_outbox_app.py").write_text(APP.format(
        name=f"outbox-bench-{tag}", bootstrap=bootstrap, topic=f"outbox-bench-{tag}", group=f"outbox-bench-{tag}",
        ledger=str(workdir / "ledger.sqlite3"), out=str(out)))
    sys.path.insert(0, str(workdir))
    import bench_outbox_app as mod  # noqa: PLC0415 - written just above

    from ktasks.appdb import create_schema

    with psycopg.connect(dsn) as conn:
        create_schema(conn)
    # Latency: one row per transaction, at a steady rate, through worker --relay.
    worker = _spawn(workdir, workdir / "worker.log", "worker", "-A", "bench_outbox_app:app", "-c", "2",
                    "--relay", dsn)
    try:
        with psycopg.connect(dsn) as conn:  # warm-up: topic creation, assignment, the relay's first look
            mod.app.outbox(conn).delay(mod.started, -1)
            conn.commit()
            _wait(lambda: out.exists() and out.read_text().strip(), 120, "the warm-up task")
            committed: dict[int, float] = {}
            interval = 1.0 / rate
            # Baseline first, same worker: delay() straight to Kafka right after each commit (ids from
            # BASE on); then the same through the outbox. The difference is what the outbox adds.
            for via_outbox, offset in ((False, BASE), (True, 0)):
                next_at = time.monotonic()
                for i in range(offset, offset + latency_rows):
                    if via_outbox:
                        mod.app.outbox(conn).delay(mod.started, i)
                        conn.commit()
                    else:
                        conn.commit()
                        mod.started.delay(i)
                    committed[i] = time.time()
                    next_at += interval
                    time.sleep(max(0.0, next_at - time.monotonic()))

        def started() -> dict[int, float]:
            lines = [line.split() for line in out.read_text().splitlines() if line.strip()]
            return {int(i): float(t) for i, t in lines if int(i) >= 0}

        _wait(lambda: len(started()) >= 2 * latency_rows, 120, "every latency task to start")
    finally:
        _stop(worker)
    begun = started()
    latencies = [(begun[i] - committed[i]) * 1000 for i in range(latency_rows)]
    direct = [(begun[i] - committed[i]) * 1000 for i in range(BASE, BASE + latency_rows)]
    # Throughput: the relay alone drains a backlog committed at once.
    relay_log = workdir / "relay.log"
    relay = _spawn(workdir, relay_log, "relay", "-A", "bench_outbox_app:app", "--dsn", dsn)
    try:
        _wait(lambda: relay_log.exists() and "relay: publishing" in relay_log.read_text(), 120, "the relay")
        with psycopg.connect(dsn) as conn:
            outbox = mod.app.outbox(conn)
            for i in range(rows):
                outbox.delay(mod.noop, i)
            conn.commit()
            t0 = time.perf_counter()
        _wait(lambda: _count(dsn) == 0, 600, "the relay to drain the outbox")
        drain_s = time.perf_counter() - t0
    finally:
        _stop(relay)
    # The same records sent by this process's producer alone, now: the machine's ceiling for the relay.
    record = mod.app.build_record(mod.noop.name, [0])
    t0 = time.perf_counter()
    for _ in range(rows):
        mod.app.send_raw(record.topic, record.value, key=record.key, headers=record.headers)
    mod.app.flush()
    producer_rate = rows / (time.perf_counter() - t0)
    mod.app.close()
    return {"p50": statistics.median(latencies), "p99": _percentile(latencies, 0.99), "max": max(latencies),
            "d50": statistics.median(direct), "d99": _percentile(direct, 0.99),
            "n": latency_rows, "rate": rate, "rows": rows, "drain_s": drain_s, "throughput": rows / drain_s,
            "producer": producer_rate, "load": os.getloadavg()[0]}


def render(r: dict[str, float], command: str) -> str:
    where = (f"{os.cpu_count()} cores ({platform.machine()}), Python {platform.python_version()}, "
             f"PostgreSQL and one Kafka broker on the same machine")
    return (
        f"## {SECTION}\n\n"
        "The transactional outbox ([Enqueueing from web apps](outbox.md)) on PostgreSQL, with the relay "
        "woken by `LISTEN/NOTIFY`.\n\n"
        f"- Machine: {where}\n- Command: `{command}`\n\n"
        "| | |\n|---|---:|\n"
        f"| Commit-to-start latency p50 ({r['n']:.0f} one-row transactions at {r['rate']:.0f}/s, "
        f"`ktasks worker -c 2 --relay`) | {r['p50']:.1f} ms |\n"
        f"| Commit-to-start latency p99 | {r['p99']:.1f} ms |\n"
        f"| Commit-to-start latency max | {r['max']:.1f} ms |\n"
        f"| Baseline, same run and worker: `delay()` right after each commit, p50 / p99 | {r['d50']:.1f} ms / "
        f"{r['d99']:.1f} ms |\n"
        f"| Relay throughput ({r['rows']:,.0f} rows committed at once, published with acks=all and deleted, "
        f"batches of 500) | {r['throughput']:,.0f} rows/s ({r['drain_s']:.2f} s) |\n"
        f"| Ceiling, same run: the same records from one producer, no database | {r['producer']:,.0f} rows/s |\n\n"
        f"The machine's load average was {r['load']:.1f} at the end of the run (other work shared its two "
        "cores), so compare each figure with its same-run baseline rather than with other sections.\n\n"
        "Latency runs from the writer's `commit()` returning to the task's first line in a worker child: "
        "the notification, the relay's claim, the publish and its acknowledgement, the delete, and the "
        "worker's fetch and dispatch.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap", default=None, help="a running broker (default: start one)")
    parser.add_argument("--dsn", default=None, help="a PostgreSQL database (default: start a throwaway server)")
    parser.add_argument("--latency-rows", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="latency transactions per second")
    parser.add_argument("--rows", type=int, default=20000, help="backlog for the throughput run")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the results into this markdown file")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="ktasks-outbox-bench-") as tmp:
        workdir = Path(tmp)
        with _broker(args.bootstrap, workdir) as bootstrap, _database(args.dsn) as dsn:
            result = run(bootstrap, dsn, workdir, args.latency_rows, args.rate, args.rows)
    print(textwrap.dedent(f"""\
        commit-to-start latency: p50 {result['p50']:.1f} ms, p99 {result['p99']:.1f} ms, max {result['max']:.1f} ms
        baseline delay() after commit: p50 {result['d50']:.1f} ms, p99 {result['d99']:.1f} ms
        relay throughput: {result['throughput']:,.0f} rows/s ({result['rows']:.0f} rows in {result['drain_s']:.2f} s);
        one producer alone: {result['producer']:,.0f} rows/s; load average {result['load']:.1f}"""))
    if args.write:
        command = "python -m benchmarks.outbox " + " ".join(sys.argv[1:] if argv is None else argv)
        write_section(args.write, render(result, command), SECTION)
        print(f"wrote {args.write}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
