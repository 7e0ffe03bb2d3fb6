"""The cost of results: worker drain rate with ``store_results`` off and on, and ``get()`` round trips.

Not a test. Uses the worker throughput benchmark's set-up (benchmarks/throughput.py):
N no-op task records produced once, then drained by ``ktasks worker -c 2 --burst``
in a fresh consumer group per run, contenders alternating in rounds: results off
(the default) and ``KTASKS_STORE_RESULTS=1`` (every task publishes its result to
``<app>.results``; these records were sent without a reply partition, so one result
record each). Then, at a low rate (one call every 100 ms), ``delay()`` followed by
``get()`` from this process against a running worker: the round trip through the
worker and the reply partition, p50 and p99.

::

    python -m benchmarks.results_cost --n 5000
    python -m benchmarks.results_cost --n 5000 --write docs/performance.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import write_section
from benchmarks.throughput import CONCURRENCY, Bench, Run

SECTION = "Cost of results"


def round_trips(bench: Bench, calls: int, interval_s: float) -> list[float]:
    """Seconds from ``delay()`` to ``get()`` returning, one call at a time, against a live worker."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(bench.dir), os.environ.get("PYTHONPATH", "")]),
               KTASKS_STORE_RESULTS="1")
    log = open(bench.dir / "latency-worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "ktasks", "worker", "-A", f"{bench.module}:app", "-c",
                               str(CONCURRENCY), "--loglevel", "WARNING", "--group", f"bench-{bench.tag}-latency",
                               "--ledger", str(bench.dir / "latency.ledger.sqlite3")],
                              cwd=bench.dir, env=env, stdout=log, stderr=subprocess.STDOUT)
    app = bench.app
    app.settings = app.settings.replace(store_results=True)
    noop = bench.app_module.noop
    try:
        # The worker's new group starts at the earliest offset, so it drains the N records first:
        # wait for one fresh call to come back before timing.
        noop.delay(-1, "warm-up", 0.0).get(timeout=600)
        out = []
        for i in range(calls):
            start = time.perf_counter()
            noop.delay(i, "latency", 0.0).get(timeout=60)
            out.append(time.perf_counter() - start)
            time.sleep(interval_s)
        return out
    finally:
        worker.terminate()
        worker.wait(timeout=120)
        log.close()


def render(runs: dict[str, list[Run]], trips: list[float], n: int, command: str, where: str) -> str:
    best = {k: max(r.rate for r in v) for k, v in runs.items()}
    rows = "\n".join(f"| {r.label} | {r.rate:,.0f} | {r.seconds:.2f} |" for v in runs.values() for r in v)
    q = statistics.quantiles(trips, n=100)
    return (
        f"## {SECTION}\n\n"
        f"{n:,} no-op task records drained by `ktasks worker -c {CONCURRENCY} --burst` (ledger on), each run in "
        f"its own group over the same records, contenders alternating in the same run: results off (the "
        f"default) and on (`KTASKS_STORE_RESULTS=1`: every task publishes a result record to `<app>.results`; "
        f"the child waits for a batch's result acknowledgements once per batch). Rates count from the first "
        f"task start to the last commit, as in the worker throughput benchmark.\n\n"
        f"- Machine: {where}; the broker runs on the same machine\n"
        f"- Command: `{command}`\n\n"
        f"| | records/s | seconds |\n|---|---:|---:|\n{rows}\n\n"
        f"Best runs: with results **{best['on'] / best['off']:.2f}x** the rate without.\n\n"
        f"`get()` round trip (`delay()` in this process, the task run by a live `ktasks worker -c "
        f"{CONCURRENCY}`, its result back through this process's reply partition), {len(trips)} calls one "
        f"after another, 100 ms apart: **p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms** "
        f"(min {min(trips) * 1000:.1f} ms, max {max(trips) * 1000:.1f} ms). Load average "
        f"{os.getloadavg()[0]:.1f} on {os.cpu_count()} cores at the end.\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KTASKS_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("-n", "--n", type=int, default=5_000, dest="n")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--calls", type=int, default=200, help="get() round trips to time")
    parser.add_argument("--write", type=Path, metavar="FILE", help="write the results into this markdown file")
    args = parser.parse_args(argv)
    bench = Bench(args.bootstrap, args.n, args.partitions)
    runs: dict[str, list[Run]] = {"off": [], "on": []}
    try:
        bench.produce()
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            runs["off"].append(bench.ktasks(label=", results off"))
            runs["on"].append(bench.ktasks(extra_env={"KTASKS_STORE_RESULTS": "1"}, label=", store_results on"))
            for k, v in runs.items():
                print(f"  {k}: {v[-1].rate:,.0f} records/s", flush=True)
        trips = round_trips(bench, args.calls, 0.1)
        command = "python -m benchmarks.results_cost " + " ".join(argv if argv is not None else sys.argv[1:])
        text = render(runs, trips, args.n, command.strip(), bench.machine())
        print(text)
        if args.write:
            write_section(args.write, text, SECTION)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
