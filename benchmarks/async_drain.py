"""Drain rate of ``async def`` tasks that each ``await asyncio.sleep(0.1)``: ``-c 1 --async-concurrency K``.

Not a test. Produces N records of one async task to a fresh topic, then runs
``ktasks worker -c 1 --async-concurrency K --burst`` once per K on its own
consumer group (so every run reads the same records). Each task appends its
start and end time to a file; the rate is N divided by the span from the
first start to the last end (worker start-up and group join left out). A plain
``def`` task sleeping 0.1 s would drain at 10/s per child; the ideal for K
slots is 10·K/s::

    python -m benchmarks.async_drain --bootstrap 127.0.0.1:9092 --n 2000
    python -m benchmarks.async_drain --n 2000 --write docs/performance.md
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

from benchmarks.report import write_section

SECTION = "Async tasks: drain rate"

APP_SOURCE = '''
import asyncio, os, time
from ktasks import App

app = App({name!r}, bootstrap_servers={bootstrap!r}, default_topic={topic!r}, partitions={partitions})
TIMES = os.environ["BENCH_TIMES"]


@app.task(name="bench.nap")
async def nap(i):
    start = time.time()
    await asyncio.sleep(0.1)
    with open(TIMES, "a") as f:     # one short append per task: a few microseconds
        f.write(f"{{start}} {{time.time()}}\\n")
'''


def run(bootstrap: str, n: int, partitions: int, slots: list[int]) -> list[tuple[int, float, float, float]]:
    """``(K, rate, span_s, wall_s)`` for each K."""
    tag = uuid.uuid4().hex[:8]
    work = Path(tempfile.mkdtemp(prefix="ktasks-async-bench-"))
    module = f"bench_async_{tag}"
    (work / f"{module}.py").write_text(textwrap.dedent(APP_SOURCE.format(
        name=f"bench-async-{tag}", bootstrap=bootstrap, topic=f"bench-async-{tag}", partitions=partitions)))
    env = dict(os.environ, PYTHONPATH=str(work), BENCH_TIMES=str(work / "produce.times"))
    sys.path.insert(0, str(work))
    os.environ["BENCH_TIMES"] = env["BENCH_TIMES"]
    app_module = __import__(module)
    for i in range(n):
        app_module.nap.delay(i)
    app_module.app.flush()
    app_module.app.close()
    out = []
    for k in slots:
        times = work / f"k{k}.times"
        env.update(BENCH_TIMES=str(times), KTASKS_GROUP_ID=f"bench-async-{tag}-k{k}",
                   KTASKS_LEDGER_PATH=str(work / f"k{k}.ledger.sqlite3"))
        t0 = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "ktasks", "worker", "-A", f"{module}:app", "-c", "1",
                               "--async-concurrency", str(k), "--burst", "--no-progress", "--loglevel", "WARNING"],
                              env=env, cwd=work, capture_output=True, text=True, timeout=3600)
        wall = time.monotonic() - t0
        if proc.returncode != 0:
            raise SystemExit(f"worker failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
        rows = [tuple(map(float, line.split())) for line in times.read_text().splitlines() if line.strip()]
        if len(rows) != n:
            raise SystemExit(f"K={k}: {len(rows)} tasks ran, expected {n}")
        span = max(end for _, end in rows) - min(start for start, _ in rows)
        out.append((k, n / span, span, wall))
        print(f"K={k}: {n} tasks in {span:.2f} s from first start to last end = {n / span:,.0f} tasks/s "
              f"(ideal {10 * k}/s); worker process {wall:.1f} s", flush=True)
    return out


def render(results: list[tuple[int, float, float, float]], n: int, partitions: int, command: str) -> str:
    rows = "\n".join(f"| {k} | {rate:,.0f} | {10 * k:,} | {rate / (10 * k):.0%} | {span:.2f} s | {wall:.1f} s |"
                     for k, rate, span, wall in results)
    return textwrap.dedent(f"""\
        ## {SECTION}

        `ktasks worker -c 1 --async-concurrency K --burst` draining {n:,} records of an `async def`
        task that only does `await asyncio.sleep(0.1)` ({partitions} partitions, ledger on). The rate
        is the records divided by the time from the first task start to the last task end;
        "ideal" is K tasks every 100 ms. One child process; a plain `def` task of the same
        length drains at 10/s per child. Measured with `{command}` on {platform.node()}
        ({os.cpu_count()} CPUs shared with other work: load average {os.getloadavg()[0]:.1f} when it ended),
        Python {platform.python_version()}.

        | K (coroutines per child) | tasks/s | ideal | of ideal | first start to last end | worker process |
        |---|---|---|---|---|---|
        """) + rows + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KTASKS_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("-n", "--n", type=int, default=2000, dest="n", help="records (default 2,000)")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--slots", default="10,50", help="comma-separated K values (default 10,50)")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the results into this markdown file")
    args = parser.parse_args(argv)
    slots = [int(k) for k in args.slots.split(",")]
    results = run(args.bootstrap, args.n, args.partitions, slots)
    if args.write:
        command = f"python -m benchmarks.async_drain --n {args.n} --slots {args.slots}"
        write_section(args.write, render(results, args.n, args.partitions, command), SECTION)
    return 0


if __name__ == "__main__":
    sys.exit(main())
