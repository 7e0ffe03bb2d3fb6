"""The Flask example under real gunicorn: several worker processes, concurrent requests, every task enqueued once.

gunicorn runs with ``--preload`` and enqueues once in the master before it
forks (a ``when_ready`` hook), so every worker inherits a live producer and
must build its own. Each worker reports at exit whether it did.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from ktasks.message import decode, header
from tests.helpers import wait_until

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "webapp"
REQUESTS = 300
WORKERS = 3

GUNICORN_CONF = """
import json, os

def _report(**fields):
    with open(os.environ["WEBAPP_TEST_REPORT"], "a") as f:
        f.write(json.dumps(fields) + "\\n")

def when_ready(server):
    # In the master, after --preload imported the app, before any worker is forked.
    import tasks
    handle = tasks.process_order.delay("master", [], 0)
    handle.wait_sent(timeout=30)
    _report(role="master", pid=os.getpid(), task_id=handle.id, producer=tasks.app.producer.started)

def worker_exit(server, worker):
    import tasks
    import ktasks.kafka.producer
    _report(role="worker", pid=os.getpid(), built_here=tasks.app.producer.started,
            inherited=len(ktasks.kafka.producer._inherited))
"""


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def _post_order(url: str, n: int) -> dict[str, Any]:
    body = json.dumps({"order_id": f"order-{n}", "items": [{"sku": f"S{n}", "qty": n % 5 + 1}],
                       "total": f"{n}.99"}).encode()
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert resp.status == 202
        return json.loads(resp.read())  # type: ignore[no-any-return]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_webapp_enqueues_every_request_once_under_gunicorn(kafka_bootstrap, unique, tmp_path, read_records):
    topic = unique("webapp")
    conf = tmp_path / "gunicorn_conf.py"
    conf.write_text(textwrap.dedent(GUNICORN_CONF))
    report = tmp_path / "report.jsonl"
    log = tmp_path / "gunicorn.log"
    port = _free_port()
    env = dict(os.environ, KTASKS_BOOTSTRAP_SERVERS=kafka_bootstrap, KTASKS_DEFAULT_TOPIC=topic,
               KTASKS_PARTITIONS="3", WEBAPP_TEST_REPORT=str(report))
    cmd = [sys.executable, "-m", "gunicorn", "--chdir", str(EXAMPLE), "-w", str(WORKERS), "-k", "gthread",
           "--threads", "4", "--preload", "-b", f"127.0.0.1:{port}", "-c", str(conf), "--graceful-timeout", "30",
           "app:app"]
    with open(log, "w") as log_file:
        server = subprocess.Popen(cmd, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            if server.poll() is not None:
                raise AssertionError(f"gunicorn exited {server.returncode}:\n{log.read_text()}")
            try:
                return bool(_get(base + "/")["pid"])
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_until(ready, 90, interval_s=0.2, message="gunicorn never answered")
        with ThreadPoolExecutor(max_workers=32) as pool:
            replies = list(pool.map(lambda n: _post_order(base + "/orders", n), range(REQUESTS)))
    finally:
        server.send_signal(signal.SIGTERM)  # graceful: workers finish, flush and exit
        try:
            server.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    output = log.read_text()
    assert server.returncode == 0, output
    assert "Traceback" not in output, output

    ids = [r["task_id"] for r in replies]
    assert len(set(ids)) == REQUESTS
    serving_pids = Counter(r["pid"] for r in replies)
    assert len(serving_pids) >= 2, f"requests were served by {serving_pids}"

    lines = [json.loads(line) for line in report.read_text().splitlines()]
    [master] = [x for x in lines if x["role"] == "master"]
    assert master["producer"] is True  # the master had a live producer when it forked
    workers = {x["pid"]: x for x in lines if x["role"] == "worker"}
    assert set(serving_pids) <= set(workers) and master["pid"] not in workers
    for pid in serving_pids:  # built its own producer, set the master's aside untouched
        assert workers[pid]["built_here"] is True and workers[pid]["inherited"] == 1, workers[pid]

    records = read_records(topic, min_count=REQUESTS + 1, timeout_s=60)
    on_topic = Counter(decode(r.value).id for r in records)
    assert on_topic[master["task_id"]] == 1
    assert all(on_topic[i] == 1 for i in ids), [i for i in ids if on_topic[i] != 1][:5]
    assert len(records) == REQUESTS + 1
    by_id = {decode(r.value).id: r for r in records}
    sample = decode(by_id[ids[7]].value)
    assert sample.task == "webapp.process_order" and sample.args[0] == replies[7]["order_id"]
    assert sample.args[2] == Decimal("7.99") and sample.args[1] == [{"sku": "S7", "qty": 3}]
    assert header(by_id[ids[7]].headers, "ktasks-task") == "webapp.process_order"
