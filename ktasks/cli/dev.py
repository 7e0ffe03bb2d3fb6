"""``ktasks dev up|down|status|logs``: the local development broker from the command line.

A thin layer over :class:`ktasks.dev.DevBroker`: progress goes to stderr,
results to stdout, and any :class:`~ktasks.errors.DevBrokerError` becomes a
one-line error with exit code 1.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import click

from ..dev import DEFAULT_PORT, DevBroker
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


@click.group()
def dev() -> None:
    """A local single-node Apache Kafka (KRaft) for development and tests."""


@dev.command()
@_broker_options
@click.option("--timeout", "timeout_s", type=float, default=60.0, show_default=True,
              help="Seconds to wait for the started broker to answer.")
def up(port: int, data_dir: Path | None, timeout_s: float) -> None:
    """Start the broker (downloading Kafka once) and wait until it answers.

    Does nothing but print its address if it is already running.
    """
    broker = DevBroker(port=port, state_dir=data_dir)
    with _progress():
        started = broker.up(timeout_s=timeout_s)
    status = broker.status()
    pid = f" (pid {status.pid})" if status is not None else ""
    if started:
        click.echo(f"Kafka is up at {broker.bootstrap}{pid}")
    else:
        click.echo(f"Kafka is already running at {broker.bootstrap}{pid}")


@dev.command()
@_broker_options
@click.option("--wipe", is_flag=True, help="Also delete the broker's data, configuration and log.")
@click.option("--timeout", "timeout_s", type=float, default=30.0, show_default=True,
              help="Seconds to wait for a clean shutdown before killing the broker.")
def down(port: int, data_dir: Path | None, wipe: bool, timeout_s: float) -> None:
    """Stop the broker started by `ktasks dev up`; keep its data unless --wipe."""
    broker = DevBroker(port=port, state_dir=data_dir)
    with _progress():
        stopped = broker.down(wipe=wipe, timeout_s=timeout_s)
    if stopped:
        click.echo(f"Kafka at {broker.bootstrap} stopped" + ("; data wiped" if wipe else ""))
    else:
        click.echo(f"Kafka at {broker.bootstrap} was not running" + ("; data wiped" if wipe else ""))


@dev.command()
@_broker_options
@click.pass_context
def status(ctx: click.Context, port: int, data_dir: Path | None) -> None:
    """Show the broker's address, pid, Kafka version and paths; exit code 1 if it is not running."""
    broker = DevBroker(port=port, state_dir=data_dir)
    current = broker.status()
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
        ("log", str(current.log_path)),
    ]
    click.echo("Kafka is running")
    for name, value in rows:
        click.echo(f"  {name:<8} {value}")


@dev.command()
@_broker_options
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines as the broker writes them.")
@click.option("-n", "--lines", type=click.IntRange(min=0), default=100, show_default=True,
              help="Number of last lines to show.")
def logs(port: int, data_dir: Path | None, follow: bool, lines: int) -> None:
    """Show the broker log."""
    broker = DevBroker(port=port, state_dir=data_dir)
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
