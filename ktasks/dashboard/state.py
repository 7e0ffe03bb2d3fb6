"""What the dashboard shows, read from Kafka only, refreshed by one background thread.

The thread owns the Kafka clients it reads with (a report feed and an admin
client for lag), so no client is shared between the web server's threads.
Pages render the last :class:`Snapshot`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import KtasksError
from ..inspect import GroupReport, Inspector, inspect_app
from ..reports import ReportFeed, WorkerReport

logger = logging.getLogger(__name__)

__all__ = ["DashboardState", "Snapshot", "GroupView"]

#: Width of a chart's time buckets, seconds.
BUCKET_S = 5.0


@dataclass
class GroupView:
    """One consumer group: its lag report (from the admin API) and its workers (from their reports)."""

    name: str
    report: GroupReport | None
    workers: list[WorkerReport]
    error: str | None = None


@dataclass
class Snapshot:
    taken_at: float = 0.0
    groups: list[GroupView] = field(default_factory=list)
    throughput: list[tuple[str, list[tuple[float, float]]]] = field(default_factory=list)
    latency: list[tuple[str, list[tuple[float, float]]]] = field(default_factory=list)
    lag: list[tuple[str, list[tuple[float, float]]]] = field(default_factory=list)
    error: str | None = None


def _bucketed(reports: Iterable[WorkerReport], value: Any, combine: Any) -> list[tuple[float, float]]:
    """One point per bucket: each member's last value in the bucket, combined across members."""
    last: dict[tuple[float, str], float] = {}
    for r in reports:
        v = value(r)
        if v is not None:
            last[(r.sent_at // BUCKET_S * BUCKET_S, r.member)] = float(v)
    per_bucket: dict[float, list[float]] = {}
    for (bucket, _), v in last.items():
        per_bucket.setdefault(bucket, []).append(v)
    return sorted((b + BUCKET_S, combine(vs)) for b, vs in per_bucket.items())


def _p95(key: str) -> Any:
    return lambda r: (r.data.get(key) or {}).get("p95")


class DashboardState:
    """Keeps a fresh :class:`Snapshot` of an app's groups, workers, lag and charts."""

    def __init__(self, app: Any, refresh_s: float = 2.0, window_s: float = 600.0,
                 chart_window_s: float = 300.0) -> None:
        self.app = app
        self.refresh_s = refresh_s
        self.chart_window_s = chart_window_s
        self.feed = ReportFeed(app.settings, window_s=window_s, client_id=f"{app.client_id}-dashboard")
        self.inspector = Inspector(app.settings, f"{app.client_id}-dashboard", timeout_s=5.0)
        self.snapshot = Snapshot()
        self._lag: dict[str, deque[tuple[float, float]]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed = threading.Event()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="ktasks-dashboard", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
        self.feed.close()
        self.inspector.close()

    def wait_ready(self, timeout_s: float) -> bool:
        """Wait for the first snapshot (so the first page is not empty)."""
        return self._refreshed.wait(timeout_s)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.refresh()
            except Exception as exc:   # keep serving the last snapshot; say what is wrong
                logger.warning("dashboard refresh failed: %s", exc)
                self.snapshot.error = str(exc)
            self._refreshed.set()
            self._stop.wait(self.refresh_s)

    def groups(self) -> list[str]:
        """The app's group, and any other group whose workers report running this app."""
        seen = {r.group for r in self.feed.latest.values() if r.data.get("app") == self.app.name}
        return [self.app.group_id, *sorted(seen - {self.app.group_id})]

    def refresh(self) -> None:
        """Read new reports and the lag of every group; rebuild the snapshot."""
        error = None
        try:
            self.feed.poll(timeout_s=0.2)
        except KtasksError as exc:
            error = f"worker reports: {exc}"
        now = time.time()
        views: list[GroupView] = []
        for group in self.groups():
            workers = [w for w in self.feed.workers(group) if w.status(now) != "stopped" or w.age_s(now) < 60]
            try:
                report = inspect_app(self.app, group, inspector=self.inspector)
                views.append(GroupView(group, report, workers))
                lag = self._lag.setdefault(group, deque())
                lag.append((now, float(report.lag)))
                while lag and lag[0][0] < now - self.chart_window_s:
                    lag.popleft()
            except KtasksError as exc:
                views.append(GroupView(group, None, workers, str(exc)))
        history = [r for r in self.feed.history if r.data.get("app") == self.app.name]
        self.snapshot = Snapshot(
            taken_at=now, groups=views,
            throughput=[("tasks/s", _bucketed(history, lambda r: r.rate(), sum))],
            latency=[("run p95", _bucketed(history, _p95("run_time_s"), max)),
                     ("queued p95", _bucketed(history, _p95("queued_s"), max))],
            lag=[(g, list(points)) for g, points in self._lag.items()],
            error=error)
