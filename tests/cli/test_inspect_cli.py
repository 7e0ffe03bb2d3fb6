"""``ktasks inspect`` and ``ktasks status`` as subprocesses, against the real broker and a real worker."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from typing import Any

from kafka import TopicPartition
from kafka.admin import OffsetSpec

from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

SOURCE = """
import time

@app.task
def slow(n):
    time.sleep(0.05)
    effect("ran", n=n)
"""


def ktasks(p: Any, *args: str, timeout_s: float = 60.0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m ktasks ARGS`` in the project's folder (so ``-A module:app`` imports it)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(p.dir), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "ktasks", *args], cwd=p.dir, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def inspect_json(p: Any, *extra: str) -> dict[str, Any]:
    out = ktasks(p, "inspect", "-A", f"{p.module}:app", "--json", *extra)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def test_inspect_json_lag_follows_the_admin_api_and_names_the_owner(project: Any, kafka_admin: Any) -> None:
    p = project(SOURCE, partitions=2)
    total = 120
    for n in range(total):
        p.app_module.slow.apply_async(args=(n,), key=f"k{n}")
    p.app.flush()
    ends = {tp.partition: o.offset for tp, o in kafka_admin.list_partition_offsets(
        {TopicPartition(p.topic, i): OffsetSpec.LATEST for i in range(2)}).items()}

    first = inspect_json(p)
    assert first["group"] == p.group and first["lag"] == total
    (topic,) = first["topics"]
    assert topic["topic"] == p.topic and topic["kind"] == "task"
    assert {part["partition"]: part["end"] for part in topic["partitions"]} == ends
    assert all(part["committed"] is None and part["owner"] is None for part in topic["partitions"])

    w = p.worker("-c", "2")
    client_id = f"ktasks-{p.app.name}@{socket.gethostname()}:{w.pid}"
    lags: list[int] = []

    def drained_report() -> dict[str, Any] | None:
        before = kafka_admin.list_group_offsets({p.group: None}).get(p.group, {})
        report = inspect_json(p)
        after = kafka_admin.list_group_offsets({p.group: None}).get(p.group, {})
        for part in report["topics"][0]["partitions"]:
            tp = TopicPartition(p.topic, part["partition"])
            assert part["end"] == ends[part["partition"]]
            if part["committed"] is not None:
                low = before[tp].offset if tp in before else -1
                assert low <= part["committed"] <= after[tp].offset
                assert part["lag"] == part["end"] - part["committed"]
        lags.append(report["lag"])
        return report if report["lag"] == 0 else None

    final = wait_until(drained_report, 120, interval_s=0.1, message="inspect never showed lag 0")
    assert len(wait_effects(p, "ran", total)) == total
    assert lags[-1] == 0 and lags == sorted(lags, reverse=True)
    owners = {part["owner"]["client_id"] for part in final["topics"][0]["partitions"]}
    assert owners == {client_id}
    assert [m["client_id"] for m in final["members"]] == [client_id]
    assert final["dead_letters"] == [{"topic": f"{p.topic}.DLT", "exists": True, "size": 0,
                                      "partitions": {"0": 0, "1": 0}}]
    assert {t["topic"] for t in final["retry_topics"]} == set(p.app.retry_topics(p.topic))

    text = ktasks(p, "inspect", "-A", f"{p.module}:app")
    assert text.returncode == 0, text.stderr
    assert "COMMITTED" in text.stdout and "OWNER" in text.stdout and client_id in text.stdout
    assert f"{p.topic}.DLT  0 record(s)" in text.stdout

    watched = ktasks(p, "inspect", "-A", f"{p.module}:app", "--json", "--watch", "--interval", "0.2",
                     "--count", "2")
    assert watched.returncode == 0, watched.stderr
    reports = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(reports) == 2 and all(r["lag"] == 0 for r in reports)
    assert w.stop() == 0


def test_status_lists_the_apps_topics(project: Any) -> None:
    p = project(SOURCE, partitions=2)
    p.app.ensure_topics([p.topic])
    out = ktasks(p, "status", "-A", f"{p.module}:app")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith(f"Kafka at {p.bootstrap}: reachable, cluster ")
    assert f"topics of app {p.app.name}:" in out.stdout
    row = next(line for line in out.stdout.splitlines() if line.split() and line.split()[0] == p.topic)
    assert "2 partition(s)" in row
    data = json.loads(ktasks(p, "status", "-A", f"{p.module}:app", "--json").stdout)
    assert data["reachable"] and data["broker_count"] >= 1 and data["cluster_id"]
    topics = {t["topic"]: t for t in data["topics"]}
    assert topics[p.topic]["partitions"] == 2
    assert topics[f"{p.topic}.DLT"]["exists"] is False


def test_status_and_inspect_exit_1_when_the_broker_is_unreachable(project: Any, closed_port: int) -> None:
    p = project(SOURCE)
    address = f"127.0.0.1:{closed_port}"
    out = ktasks(p, "status", "--bootstrap-servers", address, "--timeout", "1", timeout_s=30)
    assert out.returncode == 1
    assert out.stdout == ""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Kafka" in lines[0] and address in lines[0], out.stderr

    as_json = ktasks(p, "status", "--bootstrap-servers", address, "--timeout", "1", "--json", timeout_s=30)
    assert as_json.returncode == 1
    assert json.loads(as_json.stdout)["reachable"] is False

    (p.dir / "down_app.py").write_text(f"from ktasks import App\napp = App('down', bootstrap_servers={address!r})\n")
    down = subprocess.run([sys.executable, "-m", "ktasks", "inspect", "-A", "down_app:app", "--timeout", "1"],
                          cwd=p.dir, capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PYTHONPATH": str(p.dir)})
    assert down.returncode == 1
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach Kafka" in lines[0] and address in lines[0], down.stderr
