"""``ktasks inspect`` (lag and owners of a group) and ``ktasks status`` (is the cluster there).

Both are read-only: they use the admin API and never join a group or commit.
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click

from ..errors import BrokerUnavailable, KtasksError
from ..inspect import DEFAULT_TIMEOUT_S, Inspector, cluster_status, inspect_app, render_report, render_status
from ..reports import ReportFeed, WorkerReport, render_workers
from ..settings import Settings
from ._app import app_option, load_app, resolve_app_spec

logger = logging.getLogger(__name__)

__all__ = ["inspect", "status", "COMMANDS"]

_timeout_option = click.option(
    "--timeout", "timeout_s", type=click.FloatRange(min=0.5), default=DEFAULT_TIMEOUT_S, show_default=True,
    help="Seconds to wait for the cluster before giving up.")


@click.command()
@app_option
@click.option("--group", default=None, help="Consumer group (default: the app's).")
@click.option("--topics", default=None, help="Comma-separated task topics (default: the app's).")
@click.option("--watch", is_flag=True, help="Refresh until interrupted.")
@click.option("--interval", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between refreshes with --watch.")
@click.option("--count", type=click.IntRange(min=1), default=None,
              help="With --watch, stop after this many reports.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (one object per line with --watch).")
@_timeout_option
def inspect(app_spec: str, group: str | None, topics: str | None, watch: bool, interval: float,
            count: int | None, as_json: bool, timeout_s: float) -> None:
    """Show a group's committed offset, end offset, lag and owner for each partition.

    Covers the app's task topics (per partition, with totals), their retry
    topics (compact) and the sizes of their dead-letter topics. Lag is the
    end offset minus the committed one; for a partition with no commit yet,
    the end offset minus the earliest. The owner is the member the group's
    current assignment gives the partition to: a ktasks worker's client id is
    ``<client_id>@<host>:<pid>``. Then the group's workers as their own
    reports say (host, pid, partitions, tasks done and per second, what the
    children run); a worker silent for three report intervals is marked
    stale (after at least 10 s). Exits 1 if the cluster cannot be reached.
    """
    app = load_app(app_spec)
    wanted = [t.strip() for t in topics.split(",") if t.strip()] if topics else None
    shown = 0
    tty = sys.stdout.isatty()
    feed = ReportFeed(app.settings, client_id=f"{app.client_id}-inspect-reports")
    try:
        with Inspector(app.settings, f"{app.client_id}-inspect", timeout_s) as ins:
            while True:
                report = inspect_app(app, group, wanted, inspector=ins)
                workers = _reported_workers(feed, report.group, timeout_s)
                if as_json:
                    data = report.as_dict()
                    data["workers"] = [dict(w.data, status=w.status()) for w in workers]
                    click.echo(json.dumps(data, sort_keys=False))
                else:
                    if watch and tty:
                        click.echo("\x1b[H\x1b[2J", nl=False)   # clear the screen between reports
                    elif shown:
                        click.echo("")
                    click.echo(render_report(report))
                    click.echo(f"\nworkers (from their reports on {feed.topic}):")
                    click.echo("\n".join(render_workers(workers)) or "  (none reported in the last 10 minutes)")
                shown += 1
                if not watch or (count is not None and shown >= count):
                    break
                sys.stdout.flush()
                time.sleep(interval)
    except KeyboardInterrupt:
        pass
    except BrokerUnavailable as exc:
        raise click.ClickException(f"cannot reach Kafka: {exc}") from exc
    except KtasksError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        feed.close()
        app.close(timeout_s=2)


def _reported_workers(feed: ReportFeed, group: str, timeout_s: float) -> list[WorkerReport]:
    """The group's workers from their reports; those that said goodbye over a minute ago are left out."""
    try:
        feed.poll(timeout_s=timeout_s, until_end=True)
    except KtasksError as exc:
        logger.warning("could not read worker reports: %s", exc)
        return []
    return [w for w in feed.workers(group) if w.status() != "stopped" or w.age_s() < 60]


@click.command()
@click.option("-A", "--app", "app_spec", default=None, metavar="MODULE[:ATTR]",
              help="Show this app's topics (task, retry and dead-letter), and use its connection settings. "
                   "Default: KTASKS_APP, else the app in pyproject.toml [tool.ktasks] or ktasks.toml.")
@click.option("--bootstrap-servers", default=None, metavar="HOST:PORT[,...]",
              help="Brokers to ask (default: the app's, else KTASKS_BOOTSTRAP_SERVERS, else 127.0.0.1:9092).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@_timeout_option
def status(app_spec: str | None, bootstrap_servers: str | None, as_json: bool, timeout_s: float) -> None:
    """Say whether the Kafka cluster is reachable, and list topics with their partition counts.

    With -A, the app's topics (missing ones are shown as missing); without,
    every topic in the cluster. Exits 1, with a one-line error, if the
    cluster does not answer within --timeout seconds.
    """
    app_name = None
    topics: list[str] | None = None
    app_spec = resolve_app_spec(app_spec, required=False)
    if app_spec:
        app = load_app(app_spec)
        app_name = app.name
        settings = app.settings
        topics = []
        for t in app.task_topics():
            topics += [t, *app.retry_topics(t), app.dead_letter_topic(t)]
    else:
        settings = Settings()
    if bootstrap_servers:
        settings = settings.replace(bootstrap_servers=bootstrap_servers)
    result = cluster_status(settings, topics, app=app_name, timeout_s=timeout_s)
    if as_json:
        click.echo(json.dumps(result.as_dict()))
        if not result.reachable:
            sys.exit(1)
        return
    if not result.reachable:
        raise click.ClickException(render_status(result))
    click.echo(render_status(result))


COMMANDS = [inspect, status]
