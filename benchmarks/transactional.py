"""``--transactional`` under ``kill -9``: every follow-up record is visible exactly once.

Not a test. N ``order(n)`` tasks, each sending a follow-up ``ship(n)`` with
``delay()`` and storing a result, drained by two ``ktasks worker -c 2
--transactional`` with separate ledger files and working directories (two
hosts). While the tasks are enqueued, each worker is killed with ``kill -9``
once and started again at once. Then the task topic is read twice, with
``read_committed`` (what every ktasks worker and reader sees) and with
``read_uncommitted`` (aborted copies included), and the effects the tasks
wrote to a file are counted.

Passes when ``read_committed`` shows every follow-up exactly once and every
task ran. A task whose transaction a kill aborted runs again, so its own
effects outside Kafka (the lines in the effects file) may repeat; that count
is shown, not judged.

::

    python -m benchmarks.transactional --bootstrap 127.0.0.1:9092 --n 3000
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from ktasks.kafka import KafkaConsumer
from ktasks.message import decode

MODULE = '''
import json, os, time
from ktasks import App

app = App({name!r}, bootstrap_servers={bootstrap!r}, default_topic={topic!r}, group_id={name!r},
          partitions=4, session_timeout_ms=3000, heartbeat_interval_ms=300, store_results=True)

def effect(kind, n):
    with open({effects!r}, "a") as f:
        f.write(json.dumps({{"k": kind, "n": n, "pid": os.getpid()}}) + "\\n")

@app.task
def order(n):
    time.sleep(0.005)
    effect("order", n)
    ship.delay(n)
    return n

@app.task
def ship(n):
    effect("ship", n)
'''


def read_topic(bootstrap: str, topic: str, isolation: str) -> collections.Counter[tuple[str, Any]]:
    """(task, first argument) -> records of ``topic`` visible at ``isolation``."""
    consumer = KafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, group_id=None, isolation_level=isolation)
    seen: collections.Counter[tuple[str, Any]] = collections.Counter()
    quiet = 0
    try:
        while quiet < 6:
            got = [r for batch in consumer.poll(500).values() for r in batch]
            quiet = 0 if got else quiet + 1
            for r in got:
                m = decode(r.value)
                seen[(m.task.rsplit(".", 1)[-1], m.args[0])] += 1
    finally:
        consumer.close()
    return seen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--bootstrap", default=os.environ.get("KTASKS_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=300.0, help="tasks enqueued per second")
    parser.add_argument("--workdir", type=Path, default=None)
    args = parser.parse_args(argv)
    root = args.workdir or Path(tempfile.mkdtemp(prefix="ktasks-tx-"))
    root.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    name, topic, effects = f"txbench-{tag}", f"txbench-{tag}.tasks", root / "effects.jsonl"
    module = f"txbench_{tag}"
    (root / f"{module}.py").write_text(MODULE.format(name=name, bootstrap=args.bootstrap, topic=topic,
                                                     effects=str(effects)))
    sys.path.insert(0, str(root))
    app_module = __import__(module)
    env = dict(os.environ, PYTHONPATH=str(root))
    print(f"transactional run: {args.n} tasks, 2 workers as 2 hosts, workdir {root}", flush=True)

    def start(i: int) -> subprocess.Popen[bytes]:
        host = root / f"host{i}"
        host.mkdir(exist_ok=True)
        log = open(host / f"worker-{time.time():.0f}.log", "wb")  # noqa: SIM115 - the process owns it
        return subprocess.Popen([sys.executable, "-m", "ktasks", "worker", "-A", f"{module}:app", "-c", "2",
                                 "--transactional", "--loglevel", "WARNING", "--ledger",
                                 str(host / "ledger.sqlite3")], cwd=host, env=env, stdout=log,
                                stderr=subprocess.STDOUT)

    workers = [start(0), start(1)]
    time.sleep(8)           # both join the group before the first task
    kills = {args.n // 3: 0, 2 * args.n // 3: 1}
    began = time.time()
    for n in range(args.n):
        app_module.order.delay(n)
        if n in kills:
            app_module.app.flush()
            i = kills[n]
            os.kill(workers[i].pid, signal.SIGKILL)
            workers[i].wait()
            print(f"{time.time() - began:.1f}s: kill -9 of worker {i} after {n} tasks sent; started again",
                  flush=True)
            workers[i] = start(i)
        time.sleep(1.0 / args.rate)
    app_module.app.flush()

    def ran() -> tuple[list[int], list[int]]:
        rows = [json.loads(line) for line in effects.read_text().splitlines() if line.strip()] \
            if effects.exists() else []
        return [r["n"] for r in rows if r["k"] == "order"], [r["n"] for r in rows if r["k"] == "ship"]

    deadline = time.time() + 300
    while time.time() < deadline and len(set(ran()[1])) < args.n:
        print(f"  follow-ups run: {len(set(ran()[1]))}/{args.n}", flush=True)
        time.sleep(5)
    time.sleep(5)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    codes = [w.wait(120) for w in workers]
    orders, ships = ran()
    committed = read_topic(args.bootstrap, topic, "read_committed")
    everything = read_topic(args.bootstrap, topic, "read_uncommitted")
    follow = {k: v for k, v in committed.items() if k[0] == "ship"}
    result = {
        "n": args.n,
        "follow_ups_read_committed": sum(follow.values()),
        "follow_ups_distinct": len(follow),
        "follow_ups_duplicated": sum(v - 1 for v in follow.values()),
        "aborted_copies_read_uncommitted": sum(v for k, v in everything.items() if k[0] == "ship")
        - sum(follow.values()),
        "order_runs": len(orders), "orders_distinct": len(set(orders)),
        "ship_runs": len(ships), "ships_distinct": len(set(ships)),
        "worker_exit_codes": codes,
    }
    print(json.dumps(result))
    ok = (result["follow_ups_distinct"] == args.n and result["follow_ups_duplicated"] == 0
          and len(set(orders)) == args.n and len(set(ships)) == args.n)
    print("result:", "PASS" if ok else "FAIL")
    app_module.app.close(timeout_s=5)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
