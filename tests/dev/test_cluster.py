"""``ktasks dev up --brokers 3``: a local three-node KRaft cluster, and stopping and starting its nodes."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType

from ktasks.dev.cluster import DevCluster, is_cluster_dir
from ktasks.errors import DevBrokerError
from tests.dev.test_broker import run_cli
from tests.helpers import UniqueNames


def cluster_args(cluster: DevCluster) -> list[str]:
    return ["--port", str(cluster.port), "--data-dir", str(cluster.state_dir)]


def status_json(cluster: DevCluster) -> dict:
    result = run_cli("dev", "status", "--json", *cluster_args(cluster))
    return json.loads(result.stdout)


# -- broker-free: the layout and each node's configuration ----------------------------------------


def test_layout_is_chosen_once_and_recorded(tmp_path: Path) -> None:
    with socket.socket() as taken:  # a taken port next to the client ports is skipped
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1] - 3
        cluster = DevCluster(port=port, size=3, state_dir=tmp_path / "c")
        node = cluster.node(2)
    assert is_cluster_dir(cluster.state_dir)
    assert cluster.bootstrap == f"127.0.0.1:{port},127.0.0.1:{port + 1},127.0.0.1:{port + 2}"
    assert node.port == port + 1
    state = json.loads((cluster.state_dir / "cluster.json").read_text())
    controller_ports = [n["controller_port"] for n in state["nodes"]]
    assert port + 3 not in controller_ports and len(set(controller_ports)) == 3
    assert not set(controller_ports) & {port, port + 1, port + 2}

    again = DevCluster(port=port, state_dir=tmp_path / "c")  # size and ports come from the record
    assert again.size == 3 and again.node(3).node.controller_port == controller_ports[2]
    with pytest.raises(DevBrokerError, match="has 3 nodes, not 5"):
        DevCluster(port=port, size=5, state_dir=tmp_path / "c")

    props = dict(line.split("=", 1) for line in node._server_properties(controller_ports[1]).splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["node.id"] == "2"
    assert props["controller.quorum.voters"] == ",".join(
        f"{i + 1}@127.0.0.1:{c}" for i, c in enumerate(controller_ports))
    for key in ("default.replication.factor", "offsets.topic.replication.factor",
                "transaction.state.log.replication.factor", "share.coordinator.state.topic.replication.factor"):
        assert props[key] == "3", key
    assert props["min.insync.replicas"] == "2"
    assert props["transaction.state.log.min.isr"] == "2"
    assert state["cluster_id"] and node.node.cluster_id == state["cluster_id"]


def test_a_single_broker_state_dir_is_not_taken_for_a_cluster(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{}")
    with pytest.raises(DevBrokerError, match="holds a single-node dev broker"):
        DevCluster(port=23990, size=3, state_dir=tmp_path).up()
    result = run_cli("dev", "stop", "--node", "1", "--port", "23990", "--data-dir", str(tmp_path))
    assert result.exit_code == 1 and "no dev cluster on port 23990" in result.stderr


# -- against the session's cluster ---------------------------------------------------------------


def test_status_lists_every_node_with_one_active_controller(kafka_cluster: DevCluster) -> None:
    info = status_json(kafka_cluster)
    assert info["running"] is True and info["bootstrap"] == kafka_cluster.bootstrap
    nodes = info["nodes"]
    assert [n["node"] for n in nodes] == [1, 2, 3]
    assert [n["port"] for n in nodes] == [kafka_cluster.port + i for i in range(3)]
    assert all(isinstance(n["pid"], int) and n["running"] for n in nodes)
    roles = sorted(n["role"] for n in nodes)
    assert roles == ["active controller", "broker", "broker"]

    text = run_cli("dev", "status", *cluster_args(kafka_cluster))
    assert text.exit_code == 0
    assert "3 of 3 nodes running" in text.stdout and "active controller" in text.stdout

    again = run_cli("dev", "up", "--brokers", "3", *cluster_args(kafka_cluster))
    assert again.exit_code == 0
    assert f"is already running at {kafka_cluster.bootstrap}" in again.stdout


def test_cluster_replicates_three_ways_with_min_insync_two(kafka_cluster: DevCluster, unique: UniqueNames
                                                          ) -> None:
    admin = KafkaAdminClient(bootstrap_servers=kafka_cluster.bootstrap)
    try:
        assert sorted(b["broker_id"] for b in admin.describe_cluster()["brokers"]) == [1, 2, 3]
        topic = unique("replicated")
        admin.create_topics({topic: {"num_partitions": 2, "replication_factor": -1}}, wait_for_metadata=True)
        partitions = admin.describe_topics([topic])[0]["partitions"]
        assert [len(p["replica_nodes"]) for p in partitions] == [3, 3]
        configs = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                                         {"min.insync.replicas": None})], config_filter="all")
        assert configs["topic"][topic]["min.insync.replicas"]["value"] == "2"
    finally:
        admin.close()


# Stopping (kill -9) and starting a node through `ktasks dev stop|start --node` is exercised by
# tests/kafka/test_producer.py::test_killing_the_active_controller_loses_no_delay, so the suite restarts a
# node only once.
