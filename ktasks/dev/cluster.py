"""A local multi-node Kafka cluster: ``ktasks dev up --brokers 3``.

Every node is a combined broker and controller (a :class:`DevBroker` with its
own :class:`NodeConfig`) on loopback: node ``N`` (1-based) takes client port
``port + N - 1``. The controller ports are chosen at the first start, next to
the client ports, and recorded. The nodes share one cluster id, and the
cluster is production-shaped: ``default.replication.factor`` and the internal
topics' replication equal the node count (capped at 3), ``min.insync.replicas``
is one less (at least 1). Everything lives in one state directory::

    cluster.json        node count, ports, controller ports, cluster id
    node-1/ node-2/ ... each node's own DevBroker state directory

Each JVM gets a smaller heap than a single dev broker: three of them share a
small machine.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import DevBrokerError
from .broker import (
    DEFAULT_HOST,
    DevBroker,
    NodeConfig,
    _port_is_free,
    _wait_exit,
    default_state_dir,
    new_cluster_id,
)
from .jars import KAFKA_VERSION, file_lock

__all__ = ["CLUSTER_FILE", "DevCluster", "NodeStatus", "free_port_run", "group_offsets_partition", "is_cluster_dir"]

logger = logging.getLogger(__name__)

CLUSTER_FILE = "cluster.json"

#: Per-node JVM options, after the single broker's (the later -Xmx wins).
NODE_JAVA_OPTIONS = ("-Xms64m", "-Xmx256m")

#: Fewer threads per node than Kafka's defaults (8 I/O, 3 network): three nodes share two cores.
NODE_PROPERTIES = (
    ("num.io.threads", "2"),
    ("num.network.threads", "2"),
    ("background.threads", "2"),
)


@dataclass(frozen=True)
class NodeStatus:
    """One node of a dev cluster, as ``ktasks dev status`` shows it."""

    node_id: int
    port: int
    controller_port: int
    pid: int | None
    """Process id, or None when the node is not running."""
    role: str
    """``active controller``, ``broker`` (a running node that is not the active controller) or ``stopped``."""

    def as_dict(self) -> dict[str, Any]:
        return {"node": self.node_id, "port": self.port, "controller_port": self.controller_port,
                "pid": self.pid, "running": self.pid is not None, "role": self.role}


def free_port_run(count: int, host: str = DEFAULT_HOST) -> int:
    """The first of ``count`` consecutive ports that are all free right now."""
    from . import free_port

    for _ in range(100):
        first = free_port(host)
        if first + count < 65536 and all(_port_is_free(host, first + i) for i in range(count)):
            return first
    raise DevBrokerError(f"no run of {count} free ports found")


def group_offsets_partition(group: str, partitions: int) -> int:
    """The ``__consumer_offsets`` partition of ``group``, as Kafka picks it.

    Kafka takes Java's ``String.hashCode`` of the group id (31-fold over its UTF-16
    code units, 32-bit), clears the sign bit and takes it modulo the partition count.
    """
    data = group.encode("utf-16-be")
    h = 0
    for i in range(0, len(data), 2):
        h = (31 * h + int.from_bytes(data[i:i + 2], "big")) & 0xFFFFFFFF
    return (h & 0x7FFFFFFF) % partitions


def is_cluster_dir(state_dir: Path) -> bool:
    """Whether ``state_dir`` holds a dev cluster (rather than a single dev broker)."""
    return (state_dir / CLUSTER_FILE).exists()


class DevCluster:
    """Several combined broker-and-controller nodes forming one KRaft cluster.

    Like :class:`DevBroker`, creating the object does nothing, and any number
    of objects and processes may drive the same state directory.

    Args:
        port: client port of node 1; node N listens on ``port + N - 1``.
        size: number of nodes; taken from the recorded state when the
            cluster already exists (None: the recorded size, else 3).
        state_dir: defaults to :func:`default_state_dir` of ``port``.
        host: address to listen on and advertise.
        node_properties: further ``server.properties`` entries for every node.
        format_args: further ``StorageTool format`` arguments for every node.
    """

    def __init__(self, port: int, size: int | None = None, state_dir: str | os.PathLike[str] | None = None,
                 host: str = DEFAULT_HOST, kafka_version: str = KAFKA_VERSION,
                 node_properties: Mapping[str, str] | None = None, format_args: tuple[str, ...] = ()) -> None:
        self.port = port
        self.host = host
        self.kafka_version = kafka_version
        self.state_dir = Path(state_dir if state_dir is not None else default_state_dir(port))
        self.state_dir = self.state_dir.expanduser().resolve()
        recorded = self._load_state()
        self.size = int(recorded.get("size") or size or 3)
        if size is not None and recorded and size != self.size:
            raise DevBrokerError(f"the cluster in {self.state_dir} has {self.size} nodes, not {size}; "
                                 "`ktasks dev down --wipe` it first to change the size")
        if self.size < 1 or port + self.size > 65536:
            raise DevBrokerError(f"invalid cluster: {self.size} nodes from port {port}")
        self._node_properties = dict(node_properties or {})
        self._format_args = format_args
        self._nodes: dict[int, DevBroker] = {}

    @classmethod
    def from_state_dir(cls, state_dir: str | os.PathLike[str]) -> DevCluster:
        """The cluster recorded in ``state_dir`` (its port comes from the record)."""
        try:
            state = json.loads((Path(state_dir) / CLUSTER_FILE).read_text())
            port = int(state["nodes"][0]["port"])
        except (OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            raise DevBrokerError(f"no dev cluster recorded in {state_dir}: {exc}") from exc
        return cls(port=port, state_dir=state_dir)

    def __repr__(self) -> str:
        return f"DevCluster({self.bootstrap!r}, state_dir={str(self.state_dir)!r})"

    @property
    def bootstrap(self) -> str:
        """Every node's ``host:port``, comma-separated, for ``bootstrap_servers``."""
        return ",".join(f"{self.host}:{self.port + i}" for i in range(self.size))

    @property
    def node_ids(self) -> list[int]:
        return list(range(1, self.size + 1))

    @property
    def replication_factor(self) -> int:
        return min(self.size, 3)

    @property
    def min_insync_replicas(self) -> int:
        return max(self.replication_factor - 1, 1)

    @property
    def _state_path(self) -> Path:
        return self.state_dir / CLUSTER_FILE

    def _load_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.state_dir / CLUSTER_FILE).read_text())
        except (FileNotFoundError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    # -- nodes -------------------------------------------------------------------

    def node(self, node_id: int) -> DevBroker:
        """The :class:`DevBroker` of node ``node_id`` (1-based); the cluster's layout is fixed on first use."""
        if node_id not in self.node_ids:
            raise DevBrokerError(f"no node {node_id}: the cluster has nodes {self.node_ids[0]} to {self.size}")
        if not self._nodes:
            state = self._layout()
            voters = ",".join(f"{n['node_id']}@{self.host}:{n['controller_port']}" for n in state["nodes"])
            properties = dict(NODE_PROPERTIES)
            properties.update(self._node_properties)
            for entry in state["nodes"]:
                config = NodeConfig(node_id=entry["node_id"], controller_port=entry["controller_port"],
                                    quorum_voters=voters, cluster_id=state["cluster_id"],
                                    replication_factor=self.replication_factor,
                                    min_insync_replicas=self.min_insync_replicas,
                                    extra_properties=tuple(properties.items()), format_args=self._format_args,
                                    java_options=NODE_JAVA_OPTIONS)
                self._nodes[entry["node_id"]] = DevBroker(
                    port=entry["port"], state_dir=self.state_dir / f"node-{entry['node_id']}", host=self.host,
                    kafka_version=self.kafka_version, node=config)
        return self._nodes[node_id]

    def _layout(self) -> dict[str, Any]:
        """The recorded ports and cluster id, chosen and saved on first use."""
        state = self._load_state()
        if state.get("nodes"):
            return state
        if (self.state_dir / "state.json").exists():
            raise DevBrokerError(f"{self.state_dir} holds a single-node dev broker; stop it with "
                                 "`ktasks dev down --wipe` (or choose another --port or --data-dir)")
        client_ports = [self.port + i for i in range(self.size)]
        controller_ports: list[int] = []
        candidate = self.port + self.size
        while len(controller_ports) < self.size:  # next to the client ports, skipping taken ones
            if candidate >= 65536:
                raise DevBrokerError(f"no free controller ports above {self.port}")
            if candidate not in client_ports and _port_is_free(self.host, candidate):
                controller_ports.append(candidate)
            candidate += 1
        state = {
            "size": self.size, "host": self.host, "cluster_id": new_cluster_id(),
            "nodes": [{"node_id": i + 1, "port": p, "controller_port": c}
                      for i, (p, c) in enumerate(zip(client_ports, controller_ports))],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self._state_path.with_name(CLUSTER_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        os.replace(tmp, self._state_path)
        return state

    # -- lifecycle -------------------------------------------------------------------

    def up(self, timeout_s: float = 120.0) -> bool:
        """Start every node that is not running, and wait until each answers.

        Returns:
            True if this call started at least one node.

        Raises:
            DevBrokerError: as :meth:`DevBroker.up`, naming the node's log.
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with file_lock(self.state_dir / ".lock", f"waiting for another command on the cluster in "
                                                 f"{self.state_dir}..."):
            self.node(1)  # fix the layout before the threads use it
            # Formatting is a JVM start per node: do them side by side.
            with ThreadPoolExecutor(max_workers=self.size) as pool:
                started = dict(zip(self.node_ids, pool.map(lambda n: self.node(n).start(), self.node_ids)))
            try:
                for node_id, was_started in started.items():
                    if was_started:
                        self.node(node_id).wait_ready(timeout_s)
            except BaseException:
                for node_id, was_started in started.items():
                    if was_started:
                        self.node(node_id).down()
                raise
            return any(started.values())

    def start_node(self, node_id: int, timeout_s: float = 60.0) -> bool:
        """Start one node (after :meth:`stop_node`) and wait until it answers."""
        node = self.node(node_id)
        if not node.start():
            return False
        node.wait_ready(timeout_s)
        return True

    def stop_node(self, node_id: int, kill: bool = False, timeout_s: float = 30.0) -> bool:
        """Stop one node: cleanly (SIGTERM), or at once with ``kill`` (SIGKILL, as a crash).

        Returns:
            True if the node was running.
        """
        node = self.node(node_id)
        current = node.status()
        if current is None:
            return False
        if not kill:
            return node.down(timeout_s=timeout_s)
        logger.info("killing node %d (pid %d)", node_id, current.pid)
        try:
            os.kill(current.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        if not _wait_exit(current.pid, 10.0):
            raise DevBrokerError(f"node {node_id} (pid {current.pid}) did not exit after SIGKILL")
        node.pid_path.unlink(missing_ok=True)
        return True

    def down(self, wipe: bool = False, timeout_s: float = 30.0) -> bool:
        """Stop every node; delete the whole state directory too with ``wipe``.

        Returns:
            True if any node was running.
        """
        if not self.state_dir.exists():
            return False
        stopped = False
        if self._load_state():
            with ThreadPoolExecutor(max_workers=self.size) as pool:
                stopped = any(pool.map(lambda n: self.node(n).down(timeout_s=timeout_s), self.node_ids))
        if wipe:
            logger.info("wiping %s", self.state_dir)
            shutil.rmtree(self.state_dir, ignore_errors=True)
        return stopped

    # -- status ----------------------------------------------------------------------

    @contextmanager
    def _admin(self, timeout_s: float) -> Iterator[Any]:
        """An admin client on the running nodes (None when none runs), closed afterwards."""
        from ..kafka import KafkaAdminClient

        running = [n for n in self.node_ids if self.node(n).is_running()]
        if not running:
            yield None
            return
        timeout_ms = int(timeout_s * 1000)
        admin = KafkaAdminClient(bootstrap_servers=[self.node(n).bootstrap for n in running],
                                 client_id="ktasks-dev-status", bootstrap_timeout_ms=timeout_ms,
                                 request_timeout_ms=timeout_ms)
        try:
            yield admin
        finally:
            admin.close()

    def active_controller(self, timeout_s: float = 5.0) -> int | None:
        """Node id of the KRaft quorum's leader, as a running node reports it; None if unknown."""
        try:
            with self._admin(timeout_s) as admin:
                if admin is None:
                    return None
                quorum = admin.describe_metadata_quorum()
        except Exception as exc:  # a cluster mid-election or down: the role is unknown
            logger.debug("describe quorum failed: %r", exc)
            return None
        leader = quorum["topics"][0]["partitions"][0].get("leader_id")
        return int(leader) if isinstance(leader, int) and leader >= 0 else None

    def partition_leaders(self, topic: str, timeout_s: float = 5.0) -> dict[int, int | None]:
        """Partition number -> node id of its leader (None while it has none); empty if unknown."""
        try:
            with self._admin(timeout_s) as admin:
                described = admin.describe_topics([topic]) if admin is not None else []
        except Exception as exc:  # mid-election: ask again later
            logger.debug("describe %s failed: %r", topic, exc)
            return {}
        leaders: dict[int, int | None] = {}
        for entry in described:
            for part in entry.get("partitions") or ():
                leader = part.get("leader_id", part.get("leader"))
                index = int(part.get("partition_index", part.get("partition")))
                leaders[index] = leader if isinstance(leader, int) and leader >= 0 else None
        return leaders

    def partition_leader(self, topic: str, partition: int, timeout_s: float = 5.0) -> int | None:
        """Node id of the leader of ``topic``/``partition``; None if it has none (or it is unknown)."""
        return self.partition_leaders(topic, timeout_s).get(partition)

    def group_coordinator(self, group: str, timeout_s: float = 5.0) -> int | None:
        """Node id of ``group``'s coordinator: the leader of its ``__consumer_offsets`` partition."""
        leaders = self.partition_leaders("__consumer_offsets", timeout_s)
        if not leaders:
            return None
        return leaders.get(group_offsets_partition(group, len(leaders)))

    def status(self) -> list[NodeStatus]:
        """Every node, running or not, with its role."""
        state = self._load_state()
        if not state.get("nodes"):
            return []
        controller = self.active_controller()
        nodes = []
        for entry in state["nodes"]:
            current = self.node(entry["node_id"]).status()
            if current is None:
                role = "stopped"
            elif entry["node_id"] == controller:
                role = "active controller"
            else:
                role = "broker"
            nodes.append(NodeStatus(entry["node_id"], entry["port"], entry["controller_port"],
                                    current.pid if current is not None else None, role))
        return nodes

    def is_running(self) -> bool:
        """Whether every node is running."""
        return bool(self._load_state()) and all(self.node(n).is_running() for n in self.node_ids)

    def wait_for_controller(self, timeout_s: float = 60.0, exclude: int | None = None) -> int:
        """Wait until the quorum has a leader (other than ``exclude``) and return its node id."""
        deadline = time.monotonic() + timeout_s
        while True:
            leader = self.active_controller(timeout_s=2.0)
            if leader is not None and leader != exclude:
                return leader
            if time.monotonic() >= deadline:
                raise DevBrokerError(f"no active controller in the cluster {self.bootstrap} after {timeout_s:g} s")
            time.sleep(0.2)

