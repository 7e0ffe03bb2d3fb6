"""``ktasks relay``: publish the transactional outbox of an application database to Kafka."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from types import FrameType

import click

from ..logs import configure_logging
from ._app import app_option, loaded_app

logger = logging.getLogger(__name__)

__all__ = ["relay", "start_relay_process", "stop_relay_process"]


@click.command()
@app_option
@click.option("--dsn", required=True, envvar="KTASKS_RELAY_DSN", metavar="DSN",
              help="The database holding ktasks_outbox: postgresql://... or sqlite:///path "
                   "(env KTASKS_RELAY_DSN).")
@click.option("--batch-size", type=click.IntRange(min=1), default=500, show_default=True,
              help="Rows claimed, published and deleted per database transaction.")
@click.option("--poll-interval-ms", type=click.IntRange(min=10), default=200, show_default=True,
              help="Without LISTEN/NOTIFY (SQLite): how often an idle relay looks for rows. Also the first "
                   "backoff after a failed batch.")
@click.option("--no-create-table", is_flag=True, help="Do not create ktasks_outbox (and ktasks_claims) at start.")
@click.option("--report-interval-s", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds between progress lines while rows flow.")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False), help="Log level.")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="text: readable lines; json: one JSON object per line.")
def relay(app_spec: str, dsn: str, batch_size: int, poll_interval_ms: int, no_create_table: bool,
          report_interval_s: float, loglevel: str, log_format: str) -> None:
    """Publish committed outbox rows to Kafka, in order per key, then delete them.

    Several relays may run on one PostgreSQL database (rows are claimed with
    FOR UPDATE SKIP LOCKED). SIGTERM/SIGINT: finish the batch in hand, exit 0.
    """
    from ..relay import Relay
    from ..supervisor import die_with_supervisor

    configure_logging(loglevel, log_format, process_name="relay")
    die_with_supervisor()
    with loaded_app(app_spec) as app:
        r = Relay(app, dsn, batch_size=batch_size, poll_interval_s=poll_interval_ms / 1000.0,
                  report_interval_s=report_interval_s, create_table=not no_create_table)

        def on_signal(signum: int, frame: FrameType | None) -> None:
            logger.info("relay: %s received, stopping after the batch in hand", signal.Signals(signum).name)
            r.stop()

        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, on_signal)
        try:
            r.run()
        finally:
            r.close()


def start_relay_process(app_spec: str, dsn: str, loglevel: str, log_format: str) -> subprocess.Popen[bytes]:
    """``ktasks relay`` as a child of this process (``ktasks worker --relay``); it stops if this process dies."""
    from ..supervisor import SUPERVISOR_ENV

    env = dict(os.environ, **{SUPERVISOR_ENV: str(os.getpid())})
    cmd = [sys.executable, "-m", "ktasks", "relay", "-A", app_spec, "--dsn", dsn, "-l", loglevel,
           "--log-format", log_format]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def stop_relay_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """SIGTERM the relay, wait for its batch in hand, SIGKILL it after ``timeout_s``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            logger.warning("relay (pid %d) did not stop within %.0f s: killing it", proc.pid, timeout_s)
            proc.kill()
            proc.wait()


COMMANDS = [relay]
