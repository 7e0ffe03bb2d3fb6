"""Worker reports on Kafka: published by every worker, read back by ``ktasks inspect``."""

from __future__ import annotations

import time

import pytest

from ktasks.reports import STALE_AFTER_INTERVALS, STALE_MIN_S, WorkerReport, quantile, read_reports
from tests.cli.test_inspect_cli import ktasks
from tests.helpers import wait_until


def test_quantile_nearest_rank():
    assert quantile([], 0.5) is None
    assert quantile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert quantile([float(i) for i in range(101)], 0.95) == 95.0


def test_status_running_stale_stopped():
    now = time.time()
    fresh = WorkerReport({"member": "m", "sent_at": now - 1, "interval_s": 2.0})
    late = WorkerReport({"member": "m", "sent_at": now - STALE_AFTER_INTERVALS * 5.0 - 1, "interval_s": 5.0})
    quick = WorkerReport({"member": "m", "sent_at": now - STALE_MIN_S + 1, "interval_s": 0.5})
    gone = WorkerReport({"member": "m", "sent_at": now - 100, "interval_s": 2.0, "state": "stopped"})
    assert fresh.status(now) == "running"
    assert late.status(now) == "stale"
    assert quick.status(now) == "running"    # a short interval does not make a busy worker stale at once
    assert gone.status(now) == "stopped"


SOURCE = """
@app.task
def quick(i):
    pass

@app.task
def slow():
    effect("slow-started")
    time.sleep(60)
"""


@pytest.mark.slow
def test_a_worker_reports_itself_and_inspect_shows_it_then_marks_it_stale(project, unique):
    p = project(SOURCE, report_interval_s=0.5, reports_topic=unique("reports"))
    for i in range(20):
        p.app_module.quick.delay(i)
    p.app_module.slow.delay()
    p.app.flush(10)
    w = p.worker("-c", "2")
    slow = p.app_module.slow.name

    def running_slow() -> WorkerReport | None:
        for r in read_reports(p.app.settings, group=p.group, timeout_s=5):
            children = r.data.get("children") or []
            if r.data.get("pid") == w.pid and any((c.get("task") or {}).get("name") == slow for c in children) \
                    and r.data["counts"].get("succeeded") == 20:
                return r
        return None

    report = wait_until(running_slow, 90, interval_s=0.2, message="no report showed the slow task running")
    d = report.data
    assert d["group"] == p.group and d["concurrency"] == 2 and d["state"] == "running"
    assert report.status() == "running"
    assert {pt["topic"] for pt in d["partitions"]} >= {p.topic}
    assert d["by_task"][p.app_module.quick.name] == {"succeeded": 20}
    assert d["run_time_s"]["count"] >= 0 and d["in_flight"] >= 1
    assert len(d["children"]) == 2 and all(c["alive"] for c in d["children"])
    out = ktasks(p, "inspect", "-A", f"{p.module}:app")
    assert out.returncode == 0, out.stderr
    assert f":{w.pid}  running" in out.stdout and f"running {slow}[" in out.stdout, out.stdout

    w.kill()    # no goodbye: its last report grows old

    def stale() -> str | None:
        out = ktasks(p, "inspect", "-A", f"{p.module}:app")
        return out.stdout if f":{w.pid}  stale" in out.stdout else None

    wait_until(stale, 60, interval_s=0.5, message="inspect never marked the killed worker stale")


@pytest.mark.slow
def test_a_worker_that_stops_says_so(project, unique):
    p = project(SOURCE, report_interval_s=0.5, reports_topic=unique("reports"))
    w = p.worker("-c", "1")
    wait_until(lambda: any(r.data.get("pid") == w.pid
                           for r in read_reports(p.app.settings, group=p.group, timeout_s=5)), 90, interval_s=0.2,
               message="the worker never reported")
    assert w.stop() == 0
    last = [r for r in read_reports(p.app.settings, group=p.group, timeout_s=5) if r.data.get("pid") == w.pid]
    assert last and last[0].status() == "stopped"


class _App:
    """The part of an app a Reporter uses: sends fail while ``down``."""

    def __init__(self) -> None:
        from ktasks.settings import Settings

        self.settings = Settings({"auto_create_topics": False})
        self.down = False
        self.sent: list[bytes] = []
        self.flushes = 0

    def send_raw(self, topic: str, value: bytes, key: bytes | None = None) -> None:
        from ktasks.errors import BrokerUnavailable

        if self.down:
            raise BrokerUnavailable("Kafka at 127.0.0.1:1 unreachable after 10000 ms (send_timeout_ms)")
        self.sent.append(value)

    def flush(self, timeout_s: float) -> None:
        self.flushes += 1


class _Worker:
    def __init__(self) -> None:
        self.app = _App()


def _reporter(worker: _Worker):
    from ktasks.reports import Reporter

    r = Reporter(interval_s=3600, topic="ktasks.reports", retention_ms=60_000)
    r.worker = worker
    r.build = lambda state="running": {"member": "h:1:0", "state": state}  # type: ignore[method-assign]
    return r


def test_a_stopping_worker_skips_its_last_report_when_kafka_did_not_take_the_one_before(caplog):
    # With the broker down each report blocks send_timeout_ms before failing: a warm shutdown
    # spent a third of its 90 s sending reports nobody could receive.
    caplog.set_level("INFO", logger="ktasks.reports")
    worker = _Worker()
    r = _reporter(worker)
    worker.app.down = True
    r.publish()
    assert "could not publish the worker report" in caplog.text
    r.worker_stopped(worker)
    assert worker.app.sent == [] and worker.app.flushes == 0
    assert "not sending the last worker report" in caplog.text


def test_a_stopping_worker_sends_its_last_report_when_kafka_takes_them():
    worker = _Worker()
    r = _reporter(worker)
    r.publish()
    worker.app.down = True
    r.publish()                 # one failure, then Kafka is back
    worker.app.down = False
    r.publish()
    r.worker_stopped(worker)
    assert [b'"state":"stopped"' in v for v in worker.app.sent] == [False, False, True]
    assert worker.app.flushes == 1


def test_a_stopping_worker_skips_its_last_report_when_its_last_flush_timed_out(caplog):
    # The reports went through, but the worker's last flush at shutdown timed out (Kafka went
    # away meanwhile): the last report would wait for Kafka once more, for nothing.
    caplog.set_level("INFO", logger="ktasks.reports")
    worker = _Worker()
    r = _reporter(worker)
    r.publish()
    worker.unsent_at_exit = True     # type: ignore[attr-defined]
    r.worker_stopped(worker)
    assert [b'"state":"stopped"' in v for v in worker.app.sent] == [False]
    assert worker.app.flushes == 0
    assert "not sending the last worker report" in caplog.text
