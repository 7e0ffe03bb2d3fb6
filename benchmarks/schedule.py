"""Scheduler precision and the cost of the revocation check.

Not a test. Two parts:

1. **ETA lateness**: 1,000 tasks with ``eta=`` spread evenly over 20 s, run by
   ``ktasks worker -c 2`` (one worker, idle otherwise). Each task writes
   ``start - due`` on start. Two contenders on the same broker in the same run:
   the default delay tiers (every ETA of up to 600 s waits in a tier: the baseline)
   and tiers of ``[1000]`` ms, so every ETA over 1 s waits in ``<app>.scheduled``
   and is enqueued by the ETA scheduler's transaction.
2. **Revocation check**: the time ``MiddlewareStack.decide`` takes per record with
   the default stack (revocations, expiry, the ETA scheduler) against an empty
   stack, with 0 and 100,000 revoked ids, next to ``decode()`` of the same record
   (the work every record costs anyway), in this process.

::

    python -m benchmarks.schedule --bootstrap 127.0.0.1:9092
    python -m benchmarks.schedule --write docs/performance.md
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import timeit
import uuid
from pathlib import Path
from typing import Any

from benchmarks.report import write_section

SECTION = "Scheduling: ETA precision and the revocation check"

APP_SOURCE = '''
import os, time
from ktasks import App

app = App({name!r}, bootstrap_servers={bootstrap!r}, default_topic={topic!r}, partitions=2,
          retry_tiers_ms={tiers!r}, ledger_path={ledger!r})
OUT = {out!r}


@app.task(name="bench.eta", bind=True)
def eta(ctx, i):
    with open(OUT, "a") as f:
        f.write(f"{{i}} {{time.time() - ctx.message.due}}\\n")
'''


def eta_lateness(bootstrap: str, tiers: list[int], n: int, spread_s: float) -> dict[str, Any]:
    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="ktasks-sched-bench-"))
    module = f"bench_sched_{tag}"
    out = work / "lateness.txt"
    (work / f"{module}.py").write_text(textwrap.dedent(APP_SOURCE.format(
        name=f"bench-sched-{tag}", bootstrap=bootstrap, topic=f"bench-sched-{tag}", tiers=tiers,
        ledger=str(work / "ledger.sqlite3"), out=str(out))))
    env = dict(os.environ, PYTHONPATH=str(work))
    log = open(work / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "ktasks", "worker", "-A", f"{module}:app", "-c", "2"],
                              cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.time() + 90
        while b"ETA(s) pending" not in (work / "worker.log").read_bytes():   # the scheduler owns its partitions
            if time.time() > deadline or worker.poll() is not None:
                raise SystemExit("worker did not start:\n" + (work / "worker.log").read_text()[-3000:])
            time.sleep(0.2)
        sys.path.insert(0, str(work))
        app_module = __import__(module)
        start = time.time() + 3.0
        for i in range(n):
            due = dt.datetime.fromtimestamp(start + i * spread_s / n, dt.timezone.utc)
            app_module.eta.apply_async(args=(i,), eta=due)
        app_module.app.flush()
        deadline = start + spread_s + 60
        while time.time() < deadline:
            done = out.read_text().splitlines() if out.exists() else []
            if len(done) >= n:
                break
            time.sleep(0.5)
        rows = [line.split() for line in out.read_text().splitlines()]
        app_module.app.close()
    finally:
        worker.terminate()
        worker.wait(60)
        log.close()
    late = sorted(float(v) for _, v in rows)
    ids = [int(i) for i, _ in rows]
    return {"tiers": tiers, "ran": len(ids), "unique": len(set(ids)), "p50": _pct(late, 50),
            "p99": _pct(late, 99), "max": late[-1] if late else float("nan")}


def _pct(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(pct / 100 * (len(values) - 1))))]


def revocation_cost(repeat: int = 5, number: int = 50_000) -> dict[str, float]:
    """Nanoseconds per record: decode(), decide() with an empty stack, with the default one (0 / 100k revoked)."""
    from ktasks import App
    from ktasks.message import Message, decode, encode
    from ktasks.middleware import Intake, MiddlewareStack
    from ktasks.schedule import RevokeMiddleware
    from ktasks.schedule.revoke import RevocationReader

    app = App("bench-revoke", bootstrap_servers="127.0.0.1:1")

    @app.task(name="bench.noop")
    def noop() -> None:
        """Nothing."""

    value = encode(Message(task="bench.noop", args=[1, "x"], kwargs={}, id=uuid.uuid4().hex, created=time.time()))
    message = decode(value)
    intake = Intake(message, noop, "t", 0, 0, None, [])
    revoke = next(m for m in app.middleware if isinstance(m, RevokeMiddleware))
    revoke.reader = RevocationReader(app, app.settings)     # not started: its set is filled here
    empty = MiddlewareStack()

    def best(stmt: Any) -> float:
        return min(timeit.repeat(stmt, number=number, repeat=repeat)) / number * 1e9

    figures = {"decode": best(lambda: decode(value)), "empty": best(lambda: empty.decide(intake)),
               "default_0": best(lambda: app.middleware.decide(intake))}
    for _ in range(100_000):
        revoke.reader.revoked[uuid.uuid4().hex] = time.time()
    figures["default_100k"] = best(lambda: app.middleware.decide(intake))
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KTASKS_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--spread-s", type=float, default=20.0)
    parser.add_argument("--write", type=Path, default=None, help="Write the section into this markdown file.")
    args = parser.parse_args()
    cost = revocation_cost()
    print("revocation check, ns per record:", {k: round(v) for k, v in cost.items()}, flush=True)
    runs = [eta_lateness(args.bootstrap, tiers, args.n, args.spread_s)
            for tiers in ([1000, 10000, 60000, 600000], [1000])]
    for r in runs:
        print(r, flush=True)
    where = f"{platform.node()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    lines = [
        f"## {SECTION}",
        "",
        f"`python -m benchmarks.schedule` ({time.strftime('%Y-%m-%d')}): {args.n:,} tasks with `eta=` spread "
        f"evenly over {args.spread_s:g} s, one `ktasks worker -c 2` running no other tasks. Lateness is the task's "
        "start minus its due time, measured in the task.",
        "",
        "| ETAs wait in | ran | ran twice | lateness p50, ms | p99, ms | max, ms |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    names = {0: "delay tiers (default tiers: the baseline)", 1: "`<app>.scheduled` (tiers `[1000]`: the ETA scheduler)"}
    for i, r in enumerate(runs):
        lines.append(f"| {names[i]} | {r['ran']:,} | {r['ran'] - r['unique']} | {r['p50'] * 1000:.0f} | "
                     f"{r['p99'] * 1000:.0f} | {r['max'] * 1000:.0f} |")
    lines += [
        "",
        "The revocation check, per record taken by a worker (best of 5 × 50,000 calls, this process):",
        "",
        "| | ns per record | vs `decode()` of the record |",
        "|---|---:|---:|",
    ]
    for key, label in (("decode", "`decode()` (the baseline: every record pays it)"),
                       ("empty", "`decide()`, empty middleware stack"),
                       ("default_0", "`decide()`, default stack (revoke, expiry, scheduler), 0 revoked"),
                       ("default_100k", "`decide()`, default stack, 100,000 revoked ids")):
        lines.append(f"| {label} | {cost[key]:,.0f} | {cost[key] / cost['decode']:.2f}× |")
    lines += ["", f"- Machine: {where}; the broker runs on the same machine.", ""]
    text = "\n".join(lines)
    print(text)
    if args.write:
        write_section(args.write, text, SECTION)


if __name__ == "__main__":
    main()
