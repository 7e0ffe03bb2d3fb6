"""Prometheus metrics of a worker, served at ``/metrics`` by ``ktasks worker --metrics-port PORT``.

Counts are kept in the worker parent, from what it learns anyway: each
child's results come back to the parent, which calls the ``task_finished``
hook (:class:`~ktasks.middleware.TaskEvent`) once per record. So nothing is
counted twice and nothing is lost when a child dies, without prometheus_client's
multiprocess files. Gauges (in flight, lag, children, ...) are read from the
worker's state when Prometheus scrapes.

:data:`METRICS` is the one definition of every metric: :class:`Metrics`
registers exactly these, and the reference in ``docs/monitoring.md`` is
generated from it (``python -m ktasks.metricsdoc``).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

from .errors import ConfigurationError
from .middleware import Middleware, TaskEvent

if TYPE_CHECKING:
    from .kafka import TopicPartition

logger = logging.getLogger(__name__)

__all__ = ["METRICS", "MetricDef", "Metrics", "RUN_TIME_BUCKETS_S", "QUEUED_BUCKETS_S", "ktasks_version"]

#: Histogram buckets (seconds) of task run times: from no-op tasks to long jobs.
RUN_TIME_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                      60.0, 300.0)
#: Histogram buckets (seconds) of the wait from enqueue to start: up to a backlog of an hour.
QUEUED_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0,
                    3600.0)


@dataclass(frozen=True)
class MetricDef:
    """One metric: its full name (as exposed), type, labels and meaning."""

    name: str
    kind: str                     # "counter", "gauge" or "histogram"
    labels: tuple[str, ...]
    doc: str
    source: str                   # "event" (counted from worker hooks) or "state" (read at scrape time)


def _m(name: str, kind: str, labels: tuple[str, ...], doc: str, source: str) -> MetricDef:
    return MetricDef(name, kind, labels, doc, source)


METRICS: tuple[MetricDef, ...] = (
    _m("ktasks_tasks_finished_total", "counter", ("task", "outcome"),
       "Records the worker is done with, by task and outcome: `succeeded`, `skipped` (the ledger had it "
       "done), `retried`, `failed` (no retry left: dead-lettered), `dead_lettered` (never ran: "
       "undecodable, unregistered or poison), `expired` (not started by its `expires` time: "
       "not run, ledger state `expired`), `revoked` (revoked before it started: not run, ledger state "
       "`revoked`). Each record counts once. `task` is "
       "`(undecodable)` or `(unregistered)` for records naming no registered task.", "event"),
    _m("ktasks_task_run_time_seconds", "histogram", ("task",),
       "How long the task function ran, for tasks a child ran (succeeded, retried, failed).", "event"),
    _m("ktasks_task_queued_seconds", "histogram", ("task",),
       "From enqueue (or, for a retry or countdown, from when it was due) to its start in a child.", "event"),
    _m("ktasks_dead_letters_total", "counter", ("reason",),
       "Records sent to a dead-letter topic, by reason (`not-retriable`, `retries-exhausted`, "
       "`worker-lost`, `time-limit`, `poison`, `undecodable`, `unregistered`).", "event"),
    _m("ktasks_commits_total", "counter", (), "Offset commits that succeeded.", "event"),
    _m("ktasks_commit_failures_total", "counter", (),
       "Offset commits that failed (rejected during a rebalance, or a Kafka error).", "event"),
    _m("ktasks_partitions_assigned_total", "counter", (), "Partitions assigned to this worker.", "event"),
    _m("ktasks_partitions_revoked_total", "counter", (), "Partitions released (revoked or lost).", "event"),
    _m("ktasks_tasks_in_flight", "gauge", (), "Records handed to children and not finished.", "state"),
    _m("ktasks_tasks_ready", "gauge", (), "Records taken from Kafka, waiting for an idle child.", "state"),
    _m("ktasks_children", "gauge", (), "Child processes alive.", "state"),
    _m("ktasks_children_replaced_total", "counter", (),
       "Children replaced (died, killed for a time limit, or retired by max_tasks_per_child).", "state"),
    _m("ktasks_concurrency", "gauge", (), "Children the worker keeps (its concurrency).", "state"),
    _m("ktasks_partitions", "gauge", (), "Partitions assigned to this worker now.", "state"),
    _m("ktasks_partitions_paused", "gauge", (),
       "Assigned partitions paused (prefetch full, or holding a retry that is not due).", "state"),
    _m("ktasks_consumer_lag", "gauge", ("topic", "partition"),
       "Per assigned partition: the end offset last fetched minus the committed offset.", "state"),
    _m("ktasks_publishes_pending", "gauge", ("kind",),
       "Retry and dead-letter records sent and not yet acknowledged (`kind`: `retry`, `dead-letter`).",
       "state"),
    _m("ktasks_worker_info", "gauge", ("group", "host", "version"), "Always 1; labels describe the worker.",
       "state"),
)

_BY_NAME = {m.name: m for m in METRICS}


def ktasks_version() -> str:
    try:
        return version("ktasks")
    except PackageNotFoundError:
        return "unknown"


def _prom() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:   # pragma: no cover - an install without the extra
        raise ConfigurationError("metrics need prometheus_client: pip install 'ktasks[metrics]'") from exc
    return prometheus_client


class _StateCollector:
    """Reads the gauges from the worker's state at scrape time (on the HTTP server's thread)."""

    def __init__(self, owner: Metrics) -> None:
        self.owner = owner

    def describe(self) -> list[Any]:
        return []   # unchecked: the families depend on the worker's state

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        w = self.owner.worker
        if w is None:
            return
        fams: dict[str, Any] = {}
        for d in METRICS:
            if d.source == "state":
                cls = CounterMetricFamily if d.kind == "counter" else GaugeMetricFamily
                fams[d.name] = cls(d.name.removesuffix("_total") if d.kind == "counter" else d.name, d.doc,
                                   labels=list(d.labels))
        partitions = list(w.partitions.values())     # a copy: the loop thread changes the dict
        children = list(w.pool.children)
        publishing = list(w.publishing)
        fams["ktasks_tasks_in_flight"].add_metric([], w._in_flight)
        fams["ktasks_tasks_ready"].add_metric([], len(w.ready))
        fams["ktasks_children"].add_metric([], sum(1 for c in children if c.process.is_alive()))
        fams["ktasks_children_replaced_total"].add_metric([], w.pool.replaced)
        fams["ktasks_concurrency"].add_metric([], w.concurrency)
        fams["ktasks_partitions"].add_metric([], len(partitions))
        fams["ktasks_partitions_paused"].add_metric([], sum(1 for ps in partitions if ps.paused))
        for ps in sorted(partitions, key=lambda p: (p.tp.topic, p.tp.partition)):
            lag = partition_lag(w.consumer, ps)
            if lag is not None:
                fams["ktasks_consumer_lag"].add_metric([ps.tp.topic, str(ps.tp.partition)], lag)
        for kind in ("retry", "dead-letter"):
            fams["ktasks_publishes_pending"].add_metric([kind], sum(1 for p in publishing if p.kind == kind))
        fams["ktasks_worker_info"].add_metric([w.group_id, w.host, ktasks_version()], 1)
        yield from fams.values()


def partition_lag(consumer: Any, ps: Any) -> int | None:
    """End offset last fetched minus the committed offset of one assigned partition, if both are known."""
    committed = ps.tracker.committed
    if consumer is None or committed is None:
        return None
    try:
        end = consumer.highwater(ps.tp)
    except (AssertionError, KeyError):   # unassigned since we copied the list
        return None
    return None if end is None else max(0, int(end) - int(committed))


class Metrics(Middleware):
    """Worker middleware counting into its own registry, served over HTTP by :meth:`serve`.

    ``ktasks worker --metrics-port PORT`` adds one to the app in the worker
    parent. Children never see it: the parent counts what they report.
    """

    def __init__(self) -> None:
        prom = _prom()
        self.registry = prom.CollectorRegistry(auto_describe=False)
        self.worker: Any = None
        self._server: Any = None
        self._thread: Any = None
        self._c: dict[str, Any] = {}
        for d in METRICS:
            if d.source != "event":
                continue
            if d.kind == "counter":
                self._c[d.name] = prom.Counter(d.name.removesuffix("_total"), d.doc, d.labels,
                                               registry=self.registry)
            else:
                buckets = RUN_TIME_BUCKETS_S if "run_time" in d.name else QUEUED_BUCKETS_S
                self._c[d.name] = prom.Histogram(d.name, d.doc, d.labels, buckets=buckets, registry=self.registry)
        self.registry.register(_StateCollector(self))
        # Labelled children by label values: .labels() takes a lock and builds a key on every call.
        self._finished: dict[tuple[str, str], Any] = {}
        self._run_time: dict[str, Any] = {}
        self._queued: dict[str, Any] = {}

    # -- serving ----------------------------------------------------------------------
    def serve(self, port: int, host: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``host:port`` from a daemon thread; returns the port (useful with 0)."""
        prom = _prom()
        try:
            self._server, self._thread = prom.start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(f"metrics: cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
        bound = int(self._server.server_address[1])
        logger.info("serving Prometheus metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def render(self) -> bytes:
        """The exposition text, as a scrape would get it."""
        return bytes(_prom().generate_latest(self.registry))

    # -- hooks --------------------------------------------------------------------------
    def worker_started(self, worker: Any) -> None:
        self.worker = worker

    def worker_stopped(self, worker: Any) -> None:
        self.close()

    def task_finished(self, event: TaskEvent) -> None:
        key = (event.task, event.outcome)
        counter = self._finished.get(key)
        if counter is None:
            counter = self._finished[key] = self._c["ktasks_tasks_finished_total"].labels(*key)
        counter.inc()
        if event.run_time_s is not None:
            h = self._run_time.get(event.task)
            if h is None:
                h = self._run_time[event.task] = self._c["ktasks_task_run_time_seconds"].labels(event.task)
            h.observe(event.run_time_s)
        if event.queued_s is not None:
            h = self._queued.get(event.task)
            if h is None:
                h = self._queued[event.task] = self._c["ktasks_task_queued_seconds"].labels(event.task)
            h.observe(event.queued_s)
        if event.outcome in ("failed", "dead_lettered", "expired"):
            self._c["ktasks_dead_letters_total"].labels(event.reason or "unknown").inc()

    def offsets_committed(self, offsets: Mapping[TopicPartition, int]) -> None:
        self._c["ktasks_commits_total"].inc()

    def commit_failed(self, exc: BaseException) -> None:
        self._c["ktasks_commit_failures_total"].inc()

    def partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        self._c["ktasks_partitions_assigned_total"].inc(len(partitions))

    def partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        self._c["ktasks_partitions_revoked_total"].inc(len(partitions))
