"""The cost of results: worker drain rate with ``store_results`` off, on, and on with ``--transactional``, and ``get()`` round trips.

Not a test. Uses the worker throughput benchmark's set-up (benchmarks/throughput.py):
N no-op task records produced once, then drained by ``ktasks worker -c 2 --burst``
in a fresh consumer group per run, contenders alternating in rounds: results off
(the default) and ``KTASKS_STORE_RESULTS=1`` (every task publishes its result to
``<app>.results``; these records were sent without a reply partition, so one result
record each), and the same with ``KTASKS_TRANSACTIONAL=1`` (the results and the offsets
commit in one Kafka transaction per commit interval). Then, at a low rate (one call every 100 ms), ``delay()`` followed by
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


def round_trips(bench: Bench, calls: int, interval_s: float, transactional: bool = False) -> list[float]:
    """Seconds from ``delay()`` to ``get()`` returning, one call at a time, against a live worker."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(bench.dir), os.environ.get("PYTHONPATH", "")]),
               KTASKS_STORE_RESULTS="1")
    tag = "latency-tx" if transactional else "latency"
    if transactional:
        env["KTASKS_TRANSACTIONAL"] = "1"
    env["KTASKS_LEDGER_CHANGELOG_SUFFIX"] = f".ledger-{tag}"
    log = open(bench.dir / f"{tag}-worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "ktasks", "worker", "-A", f"{bench.module}:app", "-c",
                               str(CONCURRENCY), "--loglevel", "WARNING", "--group", f"bench-{bench.tag}-{tag}",
                               "--ledger", str(bench.dir / f"{tag}.ledger.sqlite3")],
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


def _trips(trips: list[float]) -> str:
    q = statistics.quantiles(trips, n=100)
    return (f"**p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms** (min {min(trips) * 1000:.1f} ms, "
            f"max {max(trips) * 1000:.1f} ms)")


def render(runs: dict[str, list[Run]], trips: list[float], tx_trips: list[float], n: int, command: str,
           where: str) -> str:
    best = {k: max(r.rate for r in v) for k, v in runs.items()}
    rows = "\n".join(f"| {r.label} | {r.rate:,.0f} | {r.seconds:.2f} |" for v in runs.values() for r in v)
    return (
        f"## {SECTION}\n\n"
        f"{n:,} no-op task records drained by `ktasks worker -c {CONCURRENCY} --burst` (ledger on), each run in "
        f"its own group over the same records, contenders alternating in the same run: results off (the "
        f"default) and on (`KTASKS_STORE_RESULTS=1`: every task publishes a result record to `<app>.results`; "
        f"the child waits for a batch's result acknowledgements once per batch), and on with `--transactional` "
        f"(`KTASKS_TRANSACTIONAL=1`: the results, changelog records and offsets commit in one Kafka transaction "
        f"per `commit_interval_ms`, 200 ms). Rates count from the first "
        f"task start to the last commit, as in the worker throughput benchmark.\n\n"
        f"- Machine: {where}; the broker runs on the same machine\n"
        f"- Command: `{command}`\n\n"
        f"| | records/s | seconds |\n|---|---:|---:|\n{rows}\n\n"
        f"Best runs: with results **{best['on'] / best['off']:.2f}x** the rate without; with results and "
        f"`--transactional` **{best['tx'] / best['off']:.2f}x** (**{best['tx'] / best['on']:.2f}x** results "
        f"without transactions).\n\n"
        f"`get()` round trip (`delay()` in this process, the task run by a live `ktasks worker -c "
        f"{CONCURRENCY}`, its result back through this process's reply partition), {len(trips)} calls one "
        f"after another, 100 ms apart: {_trips(trips)}; with `--transactional` (a result is visible to the "
        f"`read_committed` reply reader once its transaction commits): {_trips(tx_trips)}. Load average "
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
    runs: dict[str, list[Run]] = {"off": [], "on": [], "tx": []}
    try:
        bench.produce()
        for i in range(args.rounds):
            print(f"round {i + 1}/{args.rounds}", flush=True)
            runs["off"].append(bench.ktasks(label=", results off"))
            runs["on"].append(bench.ktasks(extra_env={"KTASKS_STORE_RESULTS": "1"}, label=", store_results on"))
            runs["tx"].append(bench.ktasks(extra_env={"KTASKS_STORE_RESULTS": "1", "KTASKS_TRANSACTIONAL": "1"},
                                           label=", store_results on, --transactional"))
            for k, v in runs.items():
                print(f"  {k}: {v[-1].rate:,.0f} records/s", flush=True)
        trips = round_trips(bench, args.calls, 0.1)
        tx_trips = round_trips(bench, args.calls, 0.1, transactional=True)
        command = "python -m benchmarks.results_cost " + " ".join(argv if argv is not None else sys.argv[1:])
        text = render(runs, trips, tx_trips, args.n, command.strip(), bench.machine())
        print(text)
        if args.write:
            write_section(args.write, text, SECTION)
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
