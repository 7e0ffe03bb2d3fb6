"""What a group is doing, read from Kafka's admin API: lag, partition owners, dead letters, cluster status.

Used by ``ktasks inspect``, ``ktasks status`` and the ``--burst`` progress
line. Everything here is read-only: nothing joins the group, seeks or
commits, so looking never disturbs a worker.

For each partition of a group's topics, the report holds:

* ``committed``: the group's committed offset (``list_group_offsets``), the
  first record the next owner would run. A ktasks worker commits the offset
  just past the highest record below which every record has finished, so
  records that finished out of order above it are not counted as done yet.
* ``end``: the offset the next record will get (``list_partition_offsets``
  with ``OffsetSpec.LATEST``).
* ``lag``: ``end - committed``; with no commit yet, ``end - earliest`` (the
  records a new group starting from the earliest offset would run).
* ``owner``: the member the group's last assignment gave the partition to,
  with its client id (``<client_id>@<host>:<pid>`` for a ktasks worker) and
  the host the broker saw it connect from (``describe_groups``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .errors import BrokerUnavailable, KtasksError
from .kafka import KafkaAdminClient, OffsetSpec, TopicPartition, client_config
from .kafka.errors import KafkaError, KafkaTimeoutError
from .settings import Settings

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TIMEOUT_S", "InspectError", "Owner", "Member", "PartitionLag", "TopicLag", "DeadLetterTopic",
    "GroupReport", "TopicInfo", "ClusterStatus", "Inspector", "inspect_app", "cluster_status",
    "render_report", "render_status",
]

#: Longest any one command waits for the cluster (connecting, then each request).
DEFAULT_TIMEOUT_S = 5.0


class InspectError(KtasksError):
    """The cluster answered, but a request about the group or its topics failed."""


# -- the report -----------------------------------------------------------------------


@dataclass(frozen=True)
class Owner:
    """The group member a partition is assigned to."""

    member_id: str
    client_id: str
    host: str
    instance_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"member_id": self.member_id, "client_id": self.client_id, "host": self.host,
                "group_instance_id": self.instance_id}


@dataclass(frozen=True)
class Member:
    """One member of the group and the partitions assigned to it."""

    owner: Owner
    partitions: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        out = self.owner.as_dict()
        out["partitions"] = [f"{t}/{p}" for t, p in self.partitions]
        return out


@dataclass(frozen=True)
class PartitionLag:
    """Offsets of one partition as the group sees them."""

    topic: str
    partition: int
    earliest: int
    end: int
    committed: int | None
    owner: Owner | None = None

    @property
    def lag(self) -> int:
        """Records not yet committed: ``end - committed``, or ``end - earliest`` with no commit."""
        start = self.committed if self.committed is not None else self.earliest
        return max(0, self.end - max(start, self.earliest))

    def as_dict(self) -> dict[str, Any]:
        return {"partition": self.partition, "earliest": self.earliest, "end": self.end,
                "committed": self.committed, "lag": self.lag,
                "owner": self.owner.as_dict() if self.owner else None}


@dataclass(frozen=True)
class TopicLag:
    """One topic the group consumes: a task topic or one of its retry topics."""

    topic: str
    kind: str                                   # "task" or "retry"
    exists: bool
    partitions: tuple[PartitionLag, ...] = ()

    @property
    def lag(self) -> int:
        return sum(p.lag for p in self.partitions)

    @property
    def end(self) -> int:
        return sum(p.end for p in self.partitions)

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "kind": self.kind, "exists": self.exists, "lag": self.lag,
                "partitions": [p.as_dict() for p in self.partitions]}


@dataclass(frozen=True)
class DeadLetterTopic:
    """A dead-letter topic and how many records it holds per partition (``end - earliest``)."""

    topic: str
    exists: bool
    sizes: Mapping[int, int] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(self.sizes.values())

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.topic, "exists": self.exists, "size": self.size,
                "partitions": {str(p): n for p, n in sorted(self.sizes.items())}}


@dataclass(frozen=True)
class GroupReport:
    """Everything ``ktasks inspect`` shows for one group, at one moment."""

    group: str
    state: str
    members: tuple[Member, ...]
    topics: tuple[TopicLag, ...]
    dead_letters: tuple[DeadLetterTopic, ...]
    taken_at: float

    @property
    def task_topics(self) -> list[TopicLag]:
        return [t for t in self.topics if t.kind == "task"]

    @property
    def retry_topics(self) -> list[TopicLag]:
        return [t for t in self.topics if t.kind == "retry"]

    @property
    def lag(self) -> int:
        """Total lag of the task topics."""
        return sum(t.lag for t in self.task_topics)

    @property
    def retry_lag(self) -> int:
        return sum(t.lag for t in self.retry_topics)

    def partition(self, topic: str, partition: int) -> PartitionLag | None:
        for t in self.topics:
            if t.topic == topic:
                for p in t.partitions:
                    if p.partition == partition:
                        return p
        return None

    def as_dict(self) -> dict[str, Any]:
        return {
            "group": self.group, "state": self.state,
            "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.taken_at)),
            "lag": self.lag, "retry_lag": self.retry_lag,
            "members": [m.as_dict() for m in self.members],
            "topics": [t.as_dict() for t in self.task_topics],
            "retry_topics": [t.as_dict() for t in self.retry_topics],
            "dead_letters": [d.as_dict() for d in self.dead_letters],
        }


@dataclass(frozen=True)
class TopicInfo:
    """A topic as ``ktasks status`` shows it."""

    name: str
    partitions: int | None                      # None: the topic does not exist
    replication_factor: int | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"topic": self.name, "exists": self.partitions is not None, "partitions": self.partitions,
                "replication_factor": self.replication_factor}


@dataclass(frozen=True)
class ClusterStatus:
    """Whether the cluster answered and, if it did, what it holds."""

    bootstrap_servers: str
    reachable: bool
    error: str | None = None
    cluster_id: str | None = None
    controller_id: int | None = None
    brokers: tuple[str, ...] = ()
    topics: tuple[TopicInfo, ...] = ()
    app: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {"bootstrap_servers": self.bootstrap_servers, "reachable": self.reachable, "error": self.error,
                "cluster_id": self.cluster_id, "controller_id": self.controller_id,
                "brokers": list(self.brokers), "broker_count": len(self.brokers), "app": self.app,
                "topics": [t.as_dict() for t in self.topics]}


# -- reading it from the cluster ---------------------------------------------------------


def _admin_config(settings: Settings, client_id: str, timeout_s: float) -> dict[str, Any]:
    timeout_ms = max(1000, int(timeout_s * 1000))
    return client_config(settings, "admin", dict(client_id=client_id, bootstrap_timeout_ms=timeout_ms,
                                                 request_timeout_ms=timeout_ms), user_wins=False)


def _owner_of(member: Mapping[str, Any]) -> Owner:
    host = str(member.get("client_host") or "")
    return Owner(member_id=str(member.get("member_id") or ""), client_id=str(member.get("client_id") or ""),
                 host=host.lstrip("/"), instance_id=member.get("group_instance_id"))


def _assigned(member: Mapping[str, Any]) -> list[tuple[str, int]]:
    assignment = member.get("member_assignment") or {}
    if not isinstance(assignment, Mapping):   # undecodable (not the consumer protocol)
        return []
    out: list[tuple[str, int]] = []
    for entry in assignment.get("assigned_partitions") or []:
        topic = entry.get("topic") if isinstance(entry, Mapping) else entry[0]
        parts = entry.get("partitions") if isinstance(entry, Mapping) else entry[1]
        out.extend((str(topic), int(p)) for p in parts or [])
    return out


class Inspector:
    """A short-lived admin client for reports; every call is bounded by ``timeout_s``.

    Raises :class:`~ktasks.errors.BrokerUnavailable` when the cluster does not
    answer in time, :class:`InspectError` when a request fails otherwise.
    """

    def __init__(self, settings: Settings, client_id: str = "ktasks-inspect",
                 timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.settings = settings
        self.client_id = client_id
        self.timeout_s = timeout_s
        self._admin: KafkaAdminClient | None = None

    @property
    def admin(self) -> KafkaAdminClient:
        if self._admin is None:
            try:
                self._admin = KafkaAdminClient(**_admin_config(self.settings, self.client_id, self.timeout_s))
            except KafkaTimeoutError as exc:
                raise BrokerUnavailable(
                    f"Kafka at {self.settings.bootstrap_servers} did not answer within {self.timeout_s:g}s"
                ) from exc
            except KafkaError as exc:
                raise BrokerUnavailable(f"Kafka at {self.settings.bootstrap_servers}: {exc}") from exc
        return self._admin

    def close(self) -> None:
        if self._admin is not None:
            try:
                self._admin.close()
            except Exception:  # closing is best effort
                logger.debug("closing the inspect admin client failed", exc_info=True)
            self._admin = None

    def __enter__(self) -> Inspector:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        # Retriable errors (a group coordinator still loading, as on a broker whose
        # __consumer_offsets topic is brand new) are retried until the timeout.
        deadline = time.monotonic() + self.timeout_s
        delay = 0.05
        while True:
            try:
                return fn(*args, **kwargs)
            except KafkaTimeoutError as exc:
                raise BrokerUnavailable(f"{what}: Kafka at {self.settings.bootstrap_servers} did not answer "
                                        f"within {self.timeout_s:g}s") from exc
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or time.monotonic() + delay > deadline:
                    raise InspectError(f"{what}: {exc}") from exc
                logger.debug("%s: %s; retrying", what, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)

    # -- building blocks ------------------------------------------------------------
    def partition_counts(self, topics: Iterable[str]) -> dict[str, int | None]:
        """``{topic: partition count}``, ``None`` for topics that do not exist."""
        names = list(dict.fromkeys(topics))
        if not names:
            return {}
        described = self._call("describing topics", self.admin.describe_topics, names)
        counts: dict[str, int | None] = dict.fromkeys(names)
        for entry in described:
            name = entry.get("name", entry.get("topic"))
            if name in counts and not entry.get("error_code") and entry.get("partitions"):
                counts[name] = len(entry["partitions"])
        return counts

    def offsets(self, tps: Sequence[TopicPartition]) -> dict[TopicPartition, tuple[int, int]]:
        """``{partition: (earliest, end)}``."""
        if not tps:
            return {}
        earliest = self._call("listing offsets", self.admin.list_partition_offsets,
                              {tp: OffsetSpec.EARLIEST for tp in tps})
        latest = self._call("listing offsets", self.admin.list_partition_offsets,
                            {tp: OffsetSpec.LATEST for tp in tps})
        return {tp: (int(earliest[tp].offset), int(latest[tp].offset)) for tp in tps}

    def committed(self, group: str) -> dict[TopicPartition, int]:
        """The group's committed offsets (empty for a group that never committed)."""
        result = self._call("reading committed offsets", self.admin.list_group_offsets, {group: None})
        return {tp: int(om.offset) for tp, om in (result.get(group) or {}).items()
                if om is not None and om.offset is not None and om.offset >= 0}

    def members(self, group: str) -> tuple[str, list[Member]]:
        """The group's state and members, with what each was assigned."""
        described = self._call("describing the group", self.admin.describe_groups, [group]).get(group) or {}
        members = [Member(_owner_of(m), tuple(sorted(_assigned(m)))) for m in described.get("members") or []]
        state = str(described.get("group_state") or "Unknown")
        if state == "Dead" and described.get("error"):
            state = "no such group"
        return state, members

    def lag(self, group: str, topics: Iterable[str]) -> dict[TopicPartition, PartitionLag]:
        """Per-partition lag of ``group`` on the existing ones of ``topics`` (no owners)."""
        counts = self.partition_counts(topics)
        tps = [TopicPartition(t, p) for t, n in counts.items() if n for p in range(n)]
        bounds = self.offsets(tps)
        committed = self.committed(group)
        return {tp: PartitionLag(tp.topic, tp.partition, bounds[tp][0], bounds[tp][1], committed.get(tp))
                for tp in tps}

    # -- reports --------------------------------------------------------------------
    def group_report(self, group: str, task_topics: Sequence[str], retry_topics: Mapping[str, Sequence[str]],
                     dead_letter_topics: Sequence[str]) -> GroupReport:
        """Lag and owners of ``group`` on its task topics (and their retry topics), and DLT sizes."""
        kinds: dict[str, str] = {}
        order: list[str] = []
        for t in task_topics:
            kinds[t] = "task"
            order.append(t)
            for rt in retry_topics.get(t, ()):
                kinds.setdefault(rt, "retry")
                order.append(rt)
        counts = self.partition_counts(order + list(dead_letter_topics))
        state, members = self.members(group)
        owners = {tp: m.owner for m in members for tp in m.partitions}
        consumed = [TopicPartition(t, p) for t in order for p in range(counts.get(t) or 0)]
        dlt_tps = [TopicPartition(t, p) for t in dead_letter_topics for p in range(counts.get(t) or 0)]
        bounds = self.offsets(consumed + dlt_tps)
        committed = self.committed(group)
        topics: list[TopicLag] = []
        for t in order:
            n = counts.get(t)
            parts = tuple(
                PartitionLag(t, p, bounds[TopicPartition(t, p)][0], bounds[TopicPartition(t, p)][1],
                             committed.get(TopicPartition(t, p)), owners.get((t, p)))
                for p in range(n or 0))
            topics.append(TopicLag(t, kinds[t], n is not None, parts))
        dlts = tuple(
            DeadLetterTopic(t, counts.get(t) is not None,
                            {p: bounds[TopicPartition(t, p)][1] - bounds[TopicPartition(t, p)][0]
                             for p in range(counts.get(t) or 0)})
            for t in dead_letter_topics)
        return GroupReport(group, state, tuple(members), tuple(topics), dlts, time.time())

    def cluster(self, topics: Iterable[str] | None = None, app: str | None = None) -> ClusterStatus:
        """Cluster id, brokers and topics (``topics``, or every non-internal topic)."""
        info = self._call("describing the cluster", self.admin.describe_cluster)
        brokers = tuple(f"{b.get('broker_id')}@{b.get('host')}:{b.get('port')}"
                        for b in info.get("brokers") or [])
        wanted = None if topics is None else list(dict.fromkeys(topics))
        described = self._call("describing topics", self.admin.describe_topics, wanted)
        found: dict[str, TopicInfo] = {}
        for entry in described:
            name = str(entry.get("name", entry.get("topic")))
            if entry.get("is_internal") and wanted is None:
                continue
            parts = entry.get("partitions") or []
            if entry.get("error_code") or not parts:
                found[name] = TopicInfo(name, None)
                continue
            rf = max((len(p.get("replica_nodes") or []) for p in parts), default=0) or None
            found[name] = TopicInfo(name, len(parts), rf)
        names = wanted if wanted is not None else sorted(found)
        return ClusterStatus(
            bootstrap_servers=self.settings.bootstrap_servers, reachable=True,
            cluster_id=info.get("cluster_id"), controller_id=info.get("controller_id"), brokers=brokers,
            topics=tuple(found.get(n, TopicInfo(n, None)) for n in names), app=app)


def app_topics(app: App, topics: Sequence[str] | None = None) -> tuple[list[str], dict[str, list[str]], list[str]]:
    """An app's task topics (or ``topics``), the retry topics of each, and their dead-letter topics."""
    task_topics = list(topics) if topics else app.task_topics()
    return (task_topics, {t: app.retry_topics(t) for t in task_topics},
            [app.dead_letter_topic(t) for t in task_topics])


def inspect_app(app: App, group: str | None = None, topics: Sequence[str] | None = None,
                timeout_s: float = DEFAULT_TIMEOUT_S, inspector: Inspector | None = None) -> GroupReport:
    """The :class:`GroupReport` of an app's group (default: the app's) on its task topics."""
    task_topics, retry_topics, dlts = app_topics(app, topics)
    own = inspector is None
    ins = inspector or Inspector(app.settings, f"{app.client_id}-inspect", timeout_s)
    try:
        return ins.group_report(group or app.group_id, task_topics, retry_topics, dlts)
    finally:
        if own:
            ins.close()


def cluster_status(settings: Settings, topics: Iterable[str] | None = None, app: str | None = None,
                   timeout_s: float = DEFAULT_TIMEOUT_S, client_id: str = "ktasks-status") -> ClusterStatus:
    """Whether the cluster answers within ``timeout_s``, and what it holds; never raises for unreachable."""
    with Inspector(settings, client_id, timeout_s) as ins:
        try:
            return ins.cluster(topics, app)
        except (BrokerUnavailable, InspectError) as exc:
            return ClusterStatus(bootstrap_servers=settings.bootstrap_servers, reachable=False, error=str(exc),
                                 app=app)


# -- text rendering ----------------------------------------------------------------------


def _table(rows: Sequence[Sequence[str]], right: Iterable[int] = ()) -> list[str]:
    """Columns padded to their widest cell; ``right`` lists right-aligned columns."""
    if not rows:
        return []
    aligned = set(right)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.rjust(w) if i in aligned else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        out.append("  ".join(cells).rstrip())
    return out


def _n(value: int | None) -> str:
    return "-" if value is None else str(value)


def render_report(report: GroupReport) -> str:
    """The report as ``ktasks inspect`` prints it: one table for task topics, compact retry and DLT lines."""
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(report.taken_at))
    lines = [f"group {report.group}: {report.state}, {len(report.members)} member(s), "
             f"lag {report.lag}" + (f" (+{report.retry_lag} in retry topics)" if report.retry_lag else "")
             + f"   [{stamp}]", ""]
    rows: list[list[str]] = [["TOPIC", "PARTITION", "COMMITTED", "END", "LAG", "OWNER", "HOST"]]
    for t in report.task_topics:
        if not t.exists:
            rows.append([t.topic, "-", "-", "-", "-", "(topic does not exist)", ""])
            continue
        for p in t.partitions:
            rows.append([t.topic, str(p.partition), _n(p.committed), str(p.end), str(p.lag),
                         p.owner.client_id if p.owner else "-", p.owner.host if p.owner else "-"])
        if len(t.partitions) > 1:
            rows.append([t.topic, "total", "", str(t.end), str(t.lag), "", ""])
    lines += _table(rows, right=(1, 2, 3, 4))
    retry = [t for t in report.retry_topics if t.exists]
    if retry:
        behind = [t for t in retry if t.lag]
        lines += ["", f"retry topics: lag {sum(t.lag for t in retry)} in {len(retry)} topic(s)"
                  + (", records waiting for a retry or a countdown:" if behind else "")]
        rrows = [[f"  {t.topic}", f"lag {t.lag}", f"end {t.end}",
                  "(" + ", ".join(f"{p.partition}:{p.lag}" for p in t.partitions if p.lag) + ")"]
                 for t in behind]
        lines += _table(rrows, right=(1, 2))
    if report.dead_letters:
        lines += ["", "dead-letter topics:"]
        drows = [[f"  {d.topic}", f"{d.size} record(s)" if d.exists else "(not created yet)"]
                 for d in report.dead_letters]
        lines += _table(drows)
    if report.members:
        lines += ["", "members:"]
        mrows = [[f"  {m.owner.client_id}", m.owner.host,
                  f"{len(m.partitions)} partition(s)",
                  f"instance {m.owner.instance_id}" if m.owner.instance_id else ""] for m in report.members]
        lines += _table(mrows)
    return "\n".join(lines)


def render_status(status: ClusterStatus) -> str:
    """``ktasks status`` text: one line about the broker, then the topics."""
    if not status.reachable:
        return f"cannot reach Kafka: {status.error}"
    lines = [f"Kafka at {status.bootstrap_servers}: reachable, cluster {status.cluster_id}, "
             f"{len(status.brokers)} broker(s) ({', '.join(status.brokers)}), controller {status.controller_id}"]
    title = f"topics of app {status.app}" if status.app else "topics"
    lines += ["", f"{title}:"]
    rows = [[f"  {t.name}", f"{t.partitions} partition(s)" if t.partitions is not None else "missing",
             f"replication {t.replication_factor}" if t.replication_factor else ""] for t in status.topics]
    lines += _table(rows) if rows else ["  (none)"]
    return "\n".join(lines)
