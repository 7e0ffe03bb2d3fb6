"""Worker reports on Kafka: each worker says what it is doing, every few seconds, on one topic.

A :class:`Reporter` (middleware in the worker parent) publishes a small JSON
report every ``report_interval_s`` to ``reports_topic`` (short retention,
created by ktasks): host, pid, group, version, concurrency, assigned
partitions with their lag, counts and rates per outcome, run-time and
queued-time quantiles of the last interval, children and the task each is
running. At shutdown it publishes a last report with ``state: "stopped"``.

:func:`read_reports` (``ktasks inspect``) and :class:`ReportFeed` (the
dashboard) read them back with a consumer that has no group, so reading
never disturbs anyone. A worker whose last report is older than
:data:`STALE_AFTER_INTERVALS` intervals (and :data:`STALE_MIN_S`) is *stale*:
killed, hung, or cut off.
Reports are data (JSON), never code.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from .errors import KtasksError
from .kafka import KafkaConsumer, TopicPartition, reader
from .kafka.errors import KafkaError
from .metrics import ktasks_version, partition_lag
from .middleware import Middleware, TaskEvent

logger = logging.getLogger(__name__)

__all__ = ["Reporter", "WorkerReport", "ReportFeed", "read_reports", "quantile", "STALE_AFTER_INTERVALS",
           "REPORT_FORMAT", "report_topic_configs"]

REPORT_FORMAT = 1
#: A running worker not heard from for this many report intervals (and at least STALE_MIN_S) is stale.
STALE_AFTER_INTERVALS = 3
STALE_MIN_S = 10.0
#: Run and queued times kept per interval for its quantiles (a sample beyond this).
_SAMPLE_CAP = 2000


def quantile(values: list[float], q: float) -> float | None:
    """The ``q`` quantile (nearest rank) of ``values``, ``None`` when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(q * (len(ordered) - 1)))))]


@dataclass
class WorkerReport:
    """One report as read back (the JSON object, with accessors for what the readers use)."""

    data: dict[str, Any]
    received_at: float = field(default_factory=time.time)

    @property
    def member(self) -> str:
        return str(self.data.get("member", "?"))

    @property
    def group(self) -> str:
        return str(self.data.get("group", "?"))

    @property
    def sent_at(self) -> float:
        return float(self.data.get("sent_at") or 0.0)

    @property
    def interval_s(self) -> float:
        return float(self.data.get("interval_s") or 5.0)

    def age_s(self, now: float | None = None) -> float:
        return max(0.0, (now or time.time()) - self.sent_at)

    def status(self, now: float | None = None) -> str:
        """``running``, ``stopped`` (said goodbye) or ``stale`` (not heard from for a while)."""
        if self.data.get("state") == "stopped":
            return "stopped"
        if self.age_s(now) > max(STALE_MIN_S, STALE_AFTER_INTERVALS * self.interval_s):
            return "stale"
        return "running"

    def finished(self) -> int:
        return int(sum((self.data.get("counts") or {}).values()))

    def rate(self) -> float:
        return float(sum((self.data.get("rates") or {}).values()))


def report_topic_configs(retention_ms: int) -> dict[str, str]:
    """The reports topic's configs: reports are only looked at while recent."""
    return {"retention.ms": str(retention_ms), "cleanup.policy": "delete"}


#: How long a stopping worker waits for the reporting thread's report in progress.
_JOIN_S = 1.0
#: How long a stopping worker waits for its last report to be acknowledged.
_LAST_REPORT_S = 3.0


class Reporter(Middleware):
    """Worker middleware publishing a :class:`WorkerReport` every ``interval_s`` from a thread."""

    def __init__(self, interval_s: float, topic: str, retention_ms: int) -> None:
        self.interval_s = interval_s
        self.topic = topic
        self.retention_ms = retention_ms
        self.worker: Any = None
        self._lock = threading.Lock()
        self._counts: dict[str, int] = {}
        self._by_task: dict[str, dict[str, int]] = {}
        self._run: list[float] = []
        self._queued: list[float] = []
        self._last_counts: dict[str, int] = {}
        self._last_at = time.time()
        self._started_at = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._ensured = False
        self._unreachable = False   # the last report failed: Kafka did not take it

    # -- hooks (the worker's loop thread) ----------------------------------------------
    def task_finished(self, event: TaskEvent) -> None:
        with self._lock:
            self._counts[event.outcome] = self._counts.get(event.outcome, 0) + 1
            per = self._by_task.setdefault(event.task, {})
            per[event.outcome] = per.get(event.outcome, 0) + 1
            if event.run_time_s is not None and len(self._run) < _SAMPLE_CAP:
                self._run.append(event.run_time_s)
            if event.queued_s is not None and len(self._queued) < _SAMPLE_CAP:
                self._queued.append(event.queued_s)

    def worker_started(self, worker: Any) -> None:
        self.worker = worker
        self._started_at = self._last_at = time.time()
        self._thread = threading.Thread(target=self._run_loop, name="ktasks-reporter", daemon=True)
        self._thread.start()

    def worker_stopping(self, worker: Any) -> None:
        self._stop.set()

    def worker_stopped(self, worker: Any) -> None:
        self._stop.set()
        stuck = False
        if self._thread is not None:
            # A report blocked on an unreachable broker holds its thread for up to send_timeout_ms;
            # the thread is a daemon, so the worker does not wait that out to exit.
            self._thread.join(timeout=_JOIN_S)
            stuck = self._thread.is_alive()
        if self._unreachable or stuck or getattr(worker, "unsent_at_exit", False):
            # It would block send_timeout_ms more, then fail: a warm shutdown with Kafka down
            # took over 90 s, a third of it in reports, past systemd's default stop timeout.
            logger.info("not sending the last worker report: Kafka did not take the records before it")
            return
        # On a thread of its own: with Kafka gone since the last report, the send alone would
        # wait send_timeout_ms for metadata. The worker waits a few seconds, then exits.
        last = threading.Thread(target=self._last_report, args=(worker,), name="ktasks-last-report", daemon=True)
        last.start()
        last.join(timeout=_LAST_REPORT_S)
        if last.is_alive():
            logger.info("the last worker report was not acknowledged within %.0f s: not waiting for it",
                        _LAST_REPORT_S)

    def _last_report(self, worker: Any) -> None:
        self.publish(state="stopped")
        try:
            worker.app.flush(_LAST_REPORT_S)
        except Exception:   # best effort: the worker is exiting anyway
            logger.debug("flushing the last report failed", exc_info=True)

    # -- the reporting thread ---------------------------------------------------------
    def _run_loop(self) -> None:
        while not self._stop.wait(self.interval_s if self._ensured else 0.0):
            self.publish()

    def publish(self, state: str = "running") -> None:
        """Build a report and send it (never raises: reporting must not hurt the worker)."""
        w = self.worker
        if w is None:
            return
        try:
            if not self._ensured:
                if w.app.settings.auto_create_topics:
                    w.app.topics.ensure([self.topic], partitions=1, configs=report_topic_configs(self.retention_ms))
                self._ensured = True
            report = self.build(state)
            w.app.send_raw(self.topic, json.dumps(report, separators=(",", ":")).encode(),
                           key=report["member"].encode())
            self._unreachable = False
        except (KtasksError, KafkaError, OSError) as exc:
            self._ensured = True    # try sending next time; do not hammer the admin API
            self._unreachable = True
            logger.warning("could not publish the worker report to %s: %s", self.topic, exc)
        except Exception:
            logger.exception("building the worker report failed")

    def build(self, state: str = "running") -> dict[str, Any]:
        """The report of the worker now, as a JSON-ready dict."""
        w = self.worker
        now = time.time()
        with self._lock:
            counts = dict(self._counts)
            by_task = {t: dict(c) for t, c in self._by_task.items()}
            run, queued = self._run, self._queued
            self._run, self._queued = [], []
        dt = max(1e-6, now - self._last_at)
        rates = {k: round((v - self._last_counts.get(k, 0)) / dt, 3) for k, v in counts.items()}
        self._last_counts, self._last_at = counts, now
        partitions = []
        for ps in sorted(list(w.partitions.values()), key=lambda p: (p.tp.topic, p.tp.partition)):
            partitions.append({"topic": ps.tp.topic, "partition": ps.tp.partition,
                               "committed": ps.tracker.committed, "lag": partition_lag(w.consumer, ps),
                               "paused": ps.paused})
        return {
            "format": REPORT_FORMAT, "member": f"{w.host}:{w.pid}:{int(self._started_at)}",
            "app": w.app.name, "group": w.group_id, "host": w.host, "pid": w.pid, "version": ktasks_version(),
            "state": state, "started_at": self._started_at, "sent_at": now, "interval_s": self.interval_s,
            "concurrency": w.concurrency, "topics": list(w.topics), "partitions": partitions,
            "counts": counts, "by_task": by_task, "rates": rates,
            "run_time_s": {"count": len(run), "p50": quantile(run, 0.5), "p95": quantile(run, 0.95)},
            "queued_s": {"count": len(queued), "p50": quantile(queued, 0.5), "p95": quantile(queued, 0.95)},
            "in_flight": w._in_flight, "ready": len(w.ready),
            "children": _children(w, now),
            "ledger_path": _ledger_path(w),
        }


def _children(w: Any, now: float) -> list[dict[str, Any]]:
    out = []
    mono = time.monotonic()
    for c in list(w.pool.children):
        running = c.running()
        task = None
        if running is not None:
            job = c.outstanding.get(running[0])
            if job is not None and job.message is not None:
                task = {"name": job.message.task, "id": job.message.id,
                        "running_s": round(mono - running[1], 3)}
        out.append({"index": c.index, "pid": c.pid, "alive": c.process.is_alive(), "tasks_done": c.tasks_done,
                    "task": task})
    return out


def _ledger_path(w: Any) -> str | None:
    if not w.settings.ledger_enabled:
        return None
    from .ledger import Ledger

    return os.path.abspath(w.settings.ledger_path or Ledger.default_path(w.group_id))


# -- reading -----------------------------------------------------------------------------


class ReportFeed:
    """Reads the reports topic from ``window_s`` ago on, and keeps reading when polled again.

    Keeps the latest report of each member (:attr:`latest`) and every report
    of the window (:attr:`history`, for charts). Uses a consumer without a
    group: nothing is committed, nobody is disturbed.
    """

    def __init__(self, settings: Any, topic: str | None = None, window_s: float = 600.0,
                 client_id: str = "ktasks-reports") -> None:
        self.settings = settings
        self.topic = topic or settings.reports_topic
        self.window_s = window_s
        self.client_id = client_id
        self.latest: dict[str, WorkerReport] = {}
        self.history: deque[WorkerReport] = deque()
        self._consumer: KafkaConsumer | None = None
        self._assigned = False

    def _connect(self) -> KafkaConsumer:
        if self._consumer is None:
            try:
                self._consumer = reader(self.settings, self.client_id)
            except KafkaError as exc:
                raise KtasksError(f"cannot read worker reports from {self.settings.bootstrap_servers}: "
                                  f"{exc}") from exc
        return self._consumer

    def _assign(self, consumer: KafkaConsumer) -> bool:
        parts = consumer.partitions_for_topic(self.topic)
        if not parts:
            return False
        tps = [TopicPartition(self.topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        since_ms = int((time.time() - self.window_s) * 1000)
        found = consumer.offsets_for_times({tp: since_ms for tp in tps})
        ends = consumer.end_offsets(tps)
        for tp in tps:
            at = found.get(tp)
            consumer.seek(tp, at.offset if at is not None else ends[tp])
        self._assigned = True
        return True

    def poll(self, timeout_s: float = 0.5, until_end: bool = False) -> int:
        """Read what arrived (with ``until_end``: up to the end offsets of now); returns how many."""
        consumer = self._connect()
        if not self._assigned and not self._assign(consumer):
            return 0
        ends = consumer.end_offsets(list(consumer.assignment())) if until_end else {}
        deadline = time.monotonic() + timeout_s
        n = 0
        while True:
            batch = consumer.poll(timeout_ms=int(max(0.0, deadline - time.monotonic()) * 1000) or 1)
            for records in batch.values():
                for record in records:
                    n += self._take(record.value)
            if not until_end or all(consumer.position(tp) >= end for tp, end in ends.items()):
                break
            if time.monotonic() > deadline:
                logger.warning("reading worker reports: not at the end of %s after %.1fs", self.topic, timeout_s)
                break
        self._expire()
        return n

    def _take(self, value: bytes | None) -> int:
        try:
            data = json.loads(value or b"")
        except ValueError:
            logger.debug("skipping an undecodable worker report")
            return 0
        if not isinstance(data, dict) or "member" not in data:
            return 0
        report = WorkerReport(data)
        current = self.latest.get(report.member)
        if current is None or current.sent_at <= report.sent_at:
            self.latest[report.member] = report
        self.history.append(report)
        return 1

    def _expire(self) -> None:
        cutoff = time.time() - self.window_s
        while self.history and self.history[0].sent_at < cutoff:
            self.history.popleft()
        for member in [m for m, r in self.latest.items() if r.sent_at < cutoff]:
            del self.latest[member]

    def workers(self, group: str | None = None) -> list[WorkerReport]:
        """Latest report per member (of ``group``), by group then host and pid."""
        return sorted((r for r in self.latest.values() if group is None or r.group == group),
                      key=lambda r: (r.group, str(r.data.get("host")), int(r.data.get("pid") or 0)))

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def read_reports(settings: Any, group: str | None = None, window_s: float = 600.0,
                 timeout_s: float = 10.0) -> list[WorkerReport]:
    """The latest report of each worker heard from in the last ``window_s`` (of ``group``)."""
    feed = ReportFeed(settings, window_s=window_s, client_id="ktasks-inspect-reports")
    try:
        feed.poll(timeout_s=timeout_s, until_end=True)
        return feed.workers(group)
    finally:
        feed.close()


def render_workers(reports: Iterable[WorkerReport], now: float | None = None) -> Iterator[str]:
    """Lines for ``ktasks inspect``: one per worker, then the tasks its children are running."""
    for r in reports:
        d = r.data
        running = [c["task"] for c in d.get("children") or [] if c.get("task")]
        yield (f"  {d.get('host')}:{d.get('pid')}  {r.status(now)} (report {r.age_s(now):.0f}s ago)  "
               f"{len(d.get('partitions') or [])} partition(s), {d.get('concurrency')} children, "
               f"{r.finished()} done, {r.rate():.1f}/s, {d.get('in_flight', 0)} in flight  v{d.get('version')}")
        for t in running:
            yield f"      running {t['name']}[{t['id']}] for {t['running_s']:.1f}s"
