"""Benchmark of the idempotency ledger: per-task cost, batched vs not, and lookups at 10k..1M entries.

    python benchmarks/ledger.py [--rows 1000000] [--dir DIR]

Fills a ledger quickly (``executemany`` in big transactions, bypassing the API)
to 10k, 100k and then 1M entries, and at each size times, through the public
API of one process:

* ``lookup hit`` / ``miss``: ``get()`` of a random existing key / of an absent one;
* ``lookup hit, raw SELECT``: the same search on a bare connection (the B-tree alone);
* ``skip``: ``begin()`` of a key that already succeeded (a redelivery);
* ``batched``: ``begin()`` + ``succeeded()`` of a new key, ``flush()`` every 64
  tasks (the worker's pattern: finishes ride along with the next start);
* ``unbatched``: the same with ``flush()`` after every task (two commits per task);
* ``bound``: ``begin()`` + ``transaction()`` with a user insert + ``succeeded(conn=)``;

and at the largest size, ``prune()`` of the oldest tenth of the entries.

Figures are µs per operation, wall clock and CPU (median of 5 runs). Runs in under a minute.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ktasks.ledger import TABLE, Ledger  # noqa: E402
from ktasks.message import pack  # noqa: E402

BATCH = 64
RESULT = pack({"status": "ok", "id": 12345})


def fill(ledger_path: Path, keys: list[str], chunk: int = 100_000) -> float:
    """Insert finished entries for ``keys`` straight into the table; returns seconds taken."""
    started = time.perf_counter()
    conn = sqlite3.connect(str(ledger_path), isolation_level=None)
    now = time.time()
    for i in range(0, len(keys), chunk):
        part = sorted(keys[i:i + chunk])  # sorted: the B-tree is appended to, not split at random
        rows = [
            (k, "bench.task", "succeeded", 0, 0, 1, "bench-host", 4242, now - 3600 - j % 500_000,
             now - 3600 - j % 500_000 + 0.01, 0.01, RESULT, now)
            for j, k in enumerate(part)
        ]
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(
            f"INSERT INTO {TABLE} (key, task, state, attempt, starts, total_starts, host, pid, started_at, "
            "finished_at, duration_s, result, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    return time.perf_counter() - started


Figure = tuple[float, float]  # µs per op: wall clock, CPU of this process


def per_op(fns: dict[str, Callable[[int], None]], n: int, repeats: int = 5) -> dict[str, Figure]:
    """µs per call of each ``fn(i)``, i in range(n): medians over ``repeats`` rounds.

    The functions take turns within each round, so a burst of load on the
    machine (or a WAL checkpoint) does not land on one of them only. CPU time
    is reported beside wall time because wall time includes the fsyncs of
    WAL checkpoints and whatever else the machine is doing.
    """
    wall: dict[str, list[float]] = {name: [] for name in fns}
    cpu: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(repeats):
        for name, fn in fns.items():
            w0, c0 = time.perf_counter(), time.process_time()
            for i in range(r * n, (r + 1) * n):
                fn(i)
            wall[name].append((time.perf_counter() - w0) / n * 1e6)
            cpu[name].append((time.process_time() - c0) / n * 1e6)
    return {name: (statistics.median(wall[name]), statistics.median(cpu[name])) for name in fns}


def measure(led: Ledger, existing: list[str], size: int, n_tasks: int, n_lookups: int,
            repeats: int = 5) -> dict[str, Figure]:
    rng = random.Random(size)
    hits = [rng.choice(existing) for _ in range(n_lookups * repeats)]
    misses = [uuid.uuid4().hex for _ in range(n_lookups * repeats)]
    # New keys are task ids, as in production: random, so each lands somewhere in the B-tree.
    new = {kind: [uuid.uuid4().hex for _ in range(n_tasks * repeats)] for kind in ("b", "u", "t")}
    raw = sqlite3.connect(str(led.path), isolation_level=None)
    # The same search without the API's Python around it: what the B-tree costs.
    select = f"SELECT state FROM {TABLE} WHERE key = ?"

    res = per_op({
        "lookup hit": lambda i: led.get(hits[i], task="t") and None,
        "lookup miss": lambda i: led.get(misses[i], task="t") and None,
        "lookup hit, raw SELECT": lambda i: raw.execute(select, (hits[i],)).fetchone() and None,
    }, n_lookups, repeats)
    raw.close()
    res.update(per_op({"skip (redelivery)": lambda i: led.begin(hits[i], "bench.task", 0, 3) and None},
                      n_lookups // 4, repeats))

    def batched(i: int) -> None:
        key = new["b"][i]
        led.begin(key, "bench.task", 0, 3)
        led.succeeded(key, {"i": i}, 0.001, task="bench.task")
        if i % BATCH == BATCH - 1:
            led.flush()

    def unbatched(i: int) -> None:
        key = new["u"][i]
        led.begin(key, "bench.task", 0, 3)
        led.succeeded(key, {"i": i}, 0.001, task="bench.task")
        led.flush()

    def bound(i: int) -> None:
        key = new["t"][i]
        led.begin(key, "bench.task", 0, 3)
        with led.transaction() as conn:
            conn.execute("INSERT INTO bench_side (key) VALUES (?)", (key,))
            led.succeeded(key, {"i": i}, 0.001, conn=conn, task="bench.task")

    res.update(per_op({"batched task": batched, "unbatched task": unbatched, "bound task": bound},
                      n_tasks, repeats))
    led.flush()
    return res


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="largest ledger size")
    parser.add_argument("--tasks", type=int, default=2000, help="tasks per timed run")
    parser.add_argument("--lookups", type=int, default=20000, help="lookups per timed run")
    parser.add_argument("--dir", help="directory for the ledger file (default: a temporary one)")
    args = parser.parse_args()

    directory = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="ktasks-ledger-bench-"))
    path = directory / "bench.ledger.sqlite3"
    for suffix in ("", "-wal", "-shm"):
        Path(str(path) + suffix).unlink(missing_ok=True)
    sizes = [s for s in (10_000, 100_000, 1_000_000) if s < args.rows] + [args.rows]
    print(f"ledger benchmark: {path}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"batch {BATCH}\n")
    started = time.perf_counter()
    led = Ledger(path)
    led.close()
    with sqlite3.connect(str(path), isolation_level=None) as conn:
        conn.execute("CREATE TABLE bench_side (key TEXT PRIMARY KEY)")
    existing: list[str] = []
    table: list[tuple[int, dict[str, Figure]]] = []
    try:
        for size in sizes:
            new = [uuid.uuid4().hex for _ in range(size - len(existing))]
            took = fill(path, new)
            existing.extend(new)
            print(f"filled to {size:>9,} entries (+{len(new):,} in {took:.1f} s, "
                  f"{len(new) / took / 1000:.0f}k rows/s)", flush=True)
            with Ledger(path) as led:
                table.append((size, measure(led, existing, size, args.tasks, args.lookups)))
        # Retention at the largest size: delete the oldest tenth, 5,000 rows per transaction.
        with Ledger(path) as led:
            cutoff = time.time() - led.stats()["oldest_finished_at"] - 10_000
            t0 = time.perf_counter()
            pruned = led.prune(cutoff, 5000, pause_s=0.0)
            prune_s = time.perf_counter() - t0
    finally:
        file_mb = path.stat().st_size / 2**20 if path.exists() else 0.0
        if not args.dir:
            shutil.rmtree(directory, ignore_errors=True)

    names = list(table[0][1])
    print(f"\nµs per operation, wall (CPU), median of 5 runs {'':>4}" + "".join(f"{s:>16,}" for s, _ in table))
    for name in names:
        print(f"  {name:<46}" + "".join(f"{res[name][0]:>8.1f} ({res[name][1]:>5.1f})" for _, res in table))
    for label, k in (("unbatched / batched, wall", 0), ("unbatched / batched, CPU", 1)):
        print(f"  {label:<46}" + "".join(
            f"{res['unbatched task'][k] / res['batched task'][k]:>15.2f}x" for _, res in table))
    print(f"\nprune at {table[-1][0]:,} entries: {pruned:,} rows in {prune_s:.2f} s, "
          f"{prune_s / max(1, -(-pruned // 5000)) * 1000:.0f} ms per 5,000-row transaction")
    first, last = table[0][1], table[-1][1]
    print(f"\nraw lookup at {table[-1][0]:,} vs {table[0][0]:,} entries: "
          f"{last['lookup hit, raw SELECT'][1] / first['lookup hit, raw SELECT'][1]:.2f}x CPU; "
          f"file {file_mb:.0f} MiB; total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
