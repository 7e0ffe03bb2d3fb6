"""``ktasks dev up|down|status|logs|stop|start``: the local development Kafka from the command line.

A thin layer over :class:`ktasks.dev.DevBroker` (one node, the default) and
:class:`ktasks.dev.cluster.DevCluster` (``up --brokers 3``): progress goes to
stderr, results to stdout, and any :class:`~ktasks.errors.DevBrokerError`
becomes a one-line error with exit code 1. The commands after ``up`` find out
from the state directory whether it holds one node or a cluster.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ..dev import DEFAULT_PORT, DevBroker, default_state_dir
from ..dev.cluster import DevCluster, is_cluster_dir
from ..dev.security import SaslSsl
from ..errors import DevBrokerError

__all__ = ["COMMANDS", "dev"]

F = TypeVar("F", bound=Callable[..., Any])


class _EchoHandler(logging.Handler):
    """Writes log messages to click's stderr (whatever stream it is at the time)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # pragma: no cover - as logging.Handler does
            self.handleError(record)


@contextmanager
def _progress() -> Iterator[None]:
    """Show ktasks' INFO log lines on stderr, and turn DevBrokerError into a one-line error."""
    target = logging.getLogger("ktasks")
    handler = _EchoHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(message)s"))
    previous = target.level
    target.addHandler(handler)
    if target.getEffectiveLevel() > logging.INFO:
        target.setLevel(logging.INFO)
    try:
        yield
    except DevBrokerError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        target.removeHandler(handler)
        target.setLevel(previous)


def _broker_options(func: F) -> F:
    func = click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                        help="State directory of the broker (data/, config, log, pid file). "
                             "[default: ~/.cache/ktasks/dev/<port>]")(func)
    func = click.option("--port", type=click.IntRange(1, 65535), default=DEFAULT_PORT, show_default=True,
                        help="Client port on 127.0.0.1.")(func)
    return func


def _cluster(port: int, data_dir: Path | None) -> DevCluster | None:
    """The dev cluster in the state directory, or None if it holds a single broker (or nothing)."""
    state_dir = data_dir if data_dir is not None else default_state_dir(port)
    if is_cluster_dir(state_dir.expanduser()):
        return DevCluster(port=port, state_dir=state_dir)
    return None


def _require_cluster(port: int, data_dir: Path | None) -> DevCluster:
    cluster = _cluster(port, data_dir)
    if cluster is None:
        raise click.ClickException(f"no dev cluster on port {port} (start one with `ktasks dev up --brokers 3"
                                   f" --port {port}`)")
    return cluster


@click.group()
def dev() -> None:
    """A local Apache Kafka (KRaft) for development and tests: one node, or a cluster."""


@dev.command()
@_broker_options
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the started broker to answer.")
@click.option("--brokers", type=click.IntRange(1, 9), default=1, show_default=True,
              help="Nodes: more than one makes a cluster of combined broker+controller nodes on ports "
                   "PORT, PORT+1, ... with replication factor 3 and min.insync.replicas 2.")
@click.option("--sasl-ssl-port", type=click.IntRange(1, 65535), default=None,
              help="Also listen for SASL_SSL clients on this port: SCRAM-SHA-512 user `ktasks` created at "
                   "format time, TLS with a throwaway CA (needs the trustme package). Prints the client "
                   "settings.")
def up(port: int, data_dir: Path | None, timeout_s: float, brokers: int, sasl_ssl_port: int | None) -> None:
    """Start the broker (downloading Kafka once) and wait until it answers.

    Does nothing but print its address if it is already running.
    """
    if brokers > 1 or _cluster(port, data_dir) is not None:
        if sasl_ssl_port is not None:
            raise click.UsageError("--sasl-ssl-port is for a single-node broker")
        _cluster_up(port, data_dir, brokers if brokers > 1 else None, timeout_s)
        return
    sasl = SaslSsl(port=sasl_ssl_port) if sasl_ssl_port is not None else None
    broker = DevBroker(port=port, state_dir=data_dir, sasl_ssl=sasl)
    with _progress():
        started = broker.up(timeout_s=timeout_s)
    status = broker.status()
    pid = f" (pid {status.pid})" if status is not None else ""
    if started:
        click.echo(f"Kafka is up at {broker.bootstrap}{pid}")
    else:
        click.echo(f"Kafka is already running at {broker.bootstrap}{pid}")
    if broker.sasl_ssl is not None:
        click.echo(f"SASL_SSL on port {broker.sasl_ssl.port}; client settings:")
        for name, value in broker.client_settings().items():
            click.echo(f"  KTASKS_{name.upper()}={value}")


def _cluster_up(port: int, data_dir: Path | None, brokers: int | None, timeout_s: float) -> None:
    with _progress():
        cluster = DevCluster(port=port, size=brokers, state_dir=data_dir)
        started = cluster.up(timeout_s=max(timeout_s, 120.0))
    state = "is up" if started else "is already running"
    click.echo(f"Kafka cluster of {cluster.size} nodes {state} at {cluster.bootstrap}")


@dev.command()
@_broker_options
@click.option("--wipe", is_flag=True, help="Also delete the broker's data, configuration and log.")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for a clean shutdown before killing the broker.")
def down(port: int, data_dir: Path | None, wipe: bool, timeout_s: float) -> None:
    """Stop the broker (or every node of the cluster) started by `ktasks dev up`; keep its data unless --wipe."""
    cluster = _cluster(port, data_dir)
    if cluster is not None:
        with _progress():
            stopped = cluster.down(wipe=wipe, timeout_s=timeout_s)
        state = "stopped" if stopped else "was not running"
        click.echo(f"Kafka cluster at {cluster.bootstrap} {state}" + ("; data wiped" if wipe else ""))
        return
    broker = DevBroker(port=port, state_dir=data_dir)
    with _progress():
        stopped = broker.down(wipe=wipe, timeout_s=timeout_s)
    if stopped:
        click.echo(f"Kafka at {broker.bootstrap} stopped" + ("; data wiped" if wipe else ""))
    else:
        click.echo(f"Kafka at {broker.bootstrap} was not running" + ("; data wiped" if wipe else ""))


@dev.command()
@_broker_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of text.")
@click.pass_context
def status(ctx: click.Context, port: int, data_dir: Path | None, as_json: bool) -> None:
    """Show the broker's address, pid, Kafka version and paths, or every cluster node's port, pid and role.

    Exit code 1 if it (or any node of the cluster) is not running.
    """
    cluster = _cluster(port, data_dir)
    if cluster is not None:
        _cluster_status(ctx, cluster, as_json)
        return
    broker = DevBroker(port=port, state_dir=data_dir)
    current = broker.status()
    if as_json:
        info: dict[str, Any] = {"bootstrap": broker.bootstrap, "running": current is not None,
                                "state_dir": str(broker.state_dir)}
        if current is not None:
            info.update(pid=current.pid, kafka_version=current.kafka_version, started_at=current.started_at,
                        controller_port=current.controller_port, log=str(current.log_path))
        click.echo(json.dumps(info, sort_keys=True))
        ctx.exit(0 if current is not None else 1)
        return
    if current is None:
        click.echo(f"Kafka at {broker.bootstrap} is not running (state in {broker.state_dir})")
        ctx.exit(1)
        return
    since = datetime.fromtimestamp(current.started_at).isoformat(sep=" ", timespec="seconds")
    rows = [
        ("address", current.bootstrap),
        ("pid", str(current.pid)),
        ("kafka", current.kafka_version),
        ("started", since),
        ("data", str(current.data_dir)),
        *([("sasl_ssl", f"port {current.sasl_ssl_port}, CA {broker.tls_dir / 'ca.pem'}")]
          if current.sasl_ssl_port is not None else []),
        ("log", str(current.log_path)),
    ]
    click.echo("Kafka is running")
    for name, value in rows:
        click.echo(f"  {name:<8} {value}")


def _cluster_status(ctx: click.Context, cluster: DevCluster, as_json: bool) -> None:
    nodes = cluster.status()
    running = bool(nodes) and all(n.pid is not None for n in nodes)
    if as_json:
        click.echo(json.dumps({"bootstrap": cluster.bootstrap, "state_dir": str(cluster.state_dir),
                               "running": running, "nodes": [n.as_dict() for n in nodes]}, sort_keys=True))
    else:
        up_count = sum(n.pid is not None for n in nodes)
        click.echo(f"Kafka cluster at {cluster.bootstrap}: {up_count} of {len(nodes)} nodes running")
        click.echo(f"  {'node':<5} {'port':<6} {'ctrl':<6} {'pid':<8} role")
        for n in nodes:
            click.echo(f"  {n.node_id:<5} {n.port:<6} {n.controller_port:<6} {n.pid or '-'!s:<8} {n.role}")
    ctx.exit(0 if running else 1)


_node_option = click.option("--node", "node_id", type=click.IntRange(1), required=True,
                            help="Node number (1 is the node on --port).")


@dev.command()
@_broker_options
@_node_option
@click.option("--kill", is_flag=True, help="Kill the node at once (SIGKILL), as a crash would.")
def stop(port: int, data_dir: Path | None, node_id: int, kill: bool) -> None:
    """Stop one node of a dev cluster (for failure tests); `ktasks dev start --node` brings it back."""
    cluster = _require_cluster(port, data_dir)
    with _progress():
        stopped = cluster.stop_node(node_id, kill=kill)
    node = cluster.node(node_id)
    click.echo(f"node {node_id} ({node.bootstrap}) " + ("stopped" if stopped else "was not running"))


@dev.command()
@_broker_options
@_node_option
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the node to answer.")
def start(port: int, data_dir: Path | None, node_id: int, timeout_s: float) -> None:
    """Start one stopped node of a dev cluster and wait until it answers."""
    cluster = _require_cluster(port, data_dir)
    with _progress():
        started = cluster.start_node(node_id, timeout_s=timeout_s)
    node = cluster.node(node_id)
    click.echo(f"node {node_id} ({node.bootstrap}) " + ("started" if started else "is already running"))


@dev.command()
@_broker_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as the broker writes them.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=100, show_default=True,
              help="Number of last lines to show.")
@click.option("--node", "node_id", type=click.IntRange(1), default=1, show_default=True,
              help="Which node's log, for a dev cluster.")
def logs(port: int, data_dir: Path | None, follow: bool, lines: int, node_id: int) -> None:
    """Show the broker log."""
    cluster = _cluster(port, data_dir)
    broker = cluster.node(node_id) if cluster is not None else DevBroker(port=port, state_dir=data_dir)
    if not broker.log_path.exists() and not follow:
        raise click.ClickException(f"no broker log at {broker.log_path} (has `ktasks dev up` run?)")
    if not follow:
        for line in broker.read_log(lines):
            click.echo(line)
        return
    try:
        for line in broker.follow_log(lines=lines):
            click.echo(line)
    except KeyboardInterrupt:
        pass


COMMANDS = [dev]
