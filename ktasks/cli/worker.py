"""``ktasks worker``: run tasks."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click

from ..errors import LedgerError
from ..logs import configure_logging
from ._app import app_option, load_app

logger = logging.getLogger(__name__)


def _resolved_spec(spec: str, app: object) -> str:
    """``module:attr`` for children to import, even when ``-A module`` found the app itself."""
    module_name, _, attr = spec.partition(":")
    if attr:
        return spec
    module = sys.modules[module_name]
    for name, value in vars(module).items():
        if value is app:
            return f"{module_name}:{name}"
    raise click.UsageError(f"-A {spec!r}: cannot find the app's attribute name in {module_name}")


def _source_root(app_spec: str) -> Path:
    """The folder ``--reload`` watches: the app module's, or its top-level package's (without importing it)."""
    module_name = app_spec.partition(":")[0].strip()
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        spec = importlib.util.find_spec(module_name)
    except (ImportError, ValueError) as exc:
        raise click.UsageError(f"-A {app_spec!r}: {exc}") from exc
    if spec is None or not spec.origin or spec.origin in ("built-in", "frozen"):
        raise click.UsageError(f"-A {app_spec!r}: no module named {module_name!r} (searched from {cwd})")
    root = Path(spec.origin).resolve().parent
    while (root / "__init__.py").exists() and (root.parent / "__init__.py").exists():
        root = root.parent
    return root


@click.command()
@app_option
@click.option("-c", "--concurrency", type=click.IntRange(min=1), default=None,
              help="Child processes (default: the number of CPUs).")
@click.option("-Q", "--queues", "--topics", "topics", default=None, metavar="TOPIC[,TOPIC...]",
              help="Comma-separated task topics to consume (default: the app's). -Q/--queues is Celery's "
                   "name for the same.")
@click.option("--group", "group_id", default=None, help="Consumer group (default: the app's name).")
@click.option("--group-instance-id", default=None, help="Static group membership id.")
@click.option("--async-concurrency", type=click.IntRange(min=1), default=None,
              help="Coroutines in flight per child for async def tasks (default: the app's "
                   "async_concurrency setting, 50).")
@click.option("--max-tasks-per-child", type=click.IntRange(min=0), default=None,
              help="Replace a child after this many tasks.")
@click.option("--ledger", "ledger_path", default=None, help="Path of the SQLite ledger.")
@click.option("--no-ledger", is_flag=True, help="Run without the ledger (no duplicate protection).")
@click.option("--transactional", is_flag=True, default=None,
              help="Exactly-once for Kafka effects: a task's delay() calls, its result and its offset commit "
                   "go in one Kafka transaction (setting transactional).")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False),
              help="Log level of the worker and its children.")
@click.option("--log-format", default="text", show_default=True, type=click.Choice(["text", "json"]),
              help="text: readable lines; json: one JSON object per line. Lines about a task carry its "
                   "name, id, topic, partition and offset.")
@click.option("--burst", is_flag=True, help="Drain the backlog, then exit 0.")
@click.option("--progress/--no-progress", default=None,
              help="With --burst: show a progress line (done, rate, lag left, ETA). "
                   "Default: on when stderr is a terminal.")
@click.option("--relay", "relay_dsn", default=None, metavar="DSN",
              help="Also run `ktasks relay --dsn DSN` beside the worker, as a child process that stops with it: "
                   "publishes the transactional outbox of that database (postgresql://... or sqlite:///path).")
@click.option("--reload", "reload_", is_flag=True,
              help="Development: restart warmly when a .py file under the app's folder changes; code that "
                   "does not compile or fails at import is reported and the running worker kept.")
@click.option("--beat", "beat", is_flag=True,
              help="Also run the app's periodic tasks (app.add_periodic_task). Any number of workers may: "
                   "exactly one fires, another takes over if it dies.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=None, metavar="PORT",
              help="Serve Prometheus metrics at http://<metrics_host>:PORT/metrics (setting metrics_port; "
                   "metrics_host defaults to 127.0.0.1).")
def worker(app_spec: str, concurrency: int | None, topics: str | None, group_id: str | None,
           group_instance_id: str | None, async_concurrency: int | None, max_tasks_per_child: int | None,
           ledger_path: str | None, transactional: bool | None,
           no_ledger: bool, loglevel: str, log_format: str, burst: bool, progress: bool | None,
           relay_dsn: str | None, reload_: bool, metrics_port: int | None, beat: bool) -> None:
    """Run a worker: one consumer in the group, a prefork pool of children.

    Exit codes: 0 after a warm shutdown (SIGTERM/SIGINT: finish in-flight
    tasks, commit, leave the group), 3 after a cold one (a second signal:
    running tasks are killed and redelivered), 4 when finished records could
    not be committed (they are delivered again), 1 on errors.
    """
    configure_logging(loglevel, log_format, process_name="worker")
    if reload_:
        from ..supervisor import Reloader, reload_argv

        sys.exit(Reloader(reload_argv(sys.argv[1:]), _source_root(app_spec), app_spec=app_spec).run())

    from ..supervisor import die_with_supervisor, run_worker
    from ..worker import EXIT_ERROR, Worker

    die_with_supervisor()
    app = load_app(app_spec)
    child_loglevel = loglevel
    if burst and (progress if progress is not None else sys.stderr.isatty()):
        from ..progress import BurstProgress

        bar = BurstProgress()
        bar.attach_logging()
        app.add_middleware(bar)
        # Children write to the same terminal without clearing the line: keep them to warnings
        # unless a level was asked for.
        ctx = click.get_current_context()
        if ctx.get_parameter_source("loglevel") == click.core.ParameterSource.DEFAULT:
            child_loglevel = "WARNING"
    if beat:
        from ..schedule.beat import BeatMiddleware

        app.add_middleware(BeatMiddleware())
    overrides: dict[str, object] = {}
    if group_instance_id:
        overrides["group_instance_id"] = group_instance_id
    if max_tasks_per_child is not None:
        overrides["max_tasks_per_child"] = max_tasks_per_child
    if async_concurrency is not None:
        overrides["async_concurrency"] = async_concurrency
    if ledger_path:
        overrides["ledger_path"] = ledger_path
    if no_ledger:
        overrides["ledger_enabled"] = False
    if transactional:
        overrides["transactional"] = True
    if metrics_port is not None:
        overrides["metrics_port"] = metrics_port
    w = Worker(app, _resolved_spec(app_spec, app), concurrency=concurrency,
               topics=[t.strip() for t in topics.split(",") if t.strip()] if topics else None,
               group_id=group_id, loglevel=child_loglevel, log_format=log_format, burst=burst,
               overrides=overrides)
    _add_monitoring(app, w.settings)
    relay_proc = None
    if relay_dsn:
        from .relay import start_relay_process

        relay_proc = start_relay_process(app_spec, relay_dsn, loglevel, log_format)
    try:
        code = run_worker(w)
    except LedgerError as exc:
        # Found before any child started: one line naming the file and what is wrong.
        logger.error("cannot start: %s", exc)
        code = EXIT_ERROR
    finally:
        if relay_proc is not None:
            from .relay import stop_relay_process

            stop_relay_process(relay_proc)
    sys.exit(code)


def _add_monitoring(app: Any, settings: Any) -> None:
    """The metrics endpoint and the reports on Kafka, as the worker's settings ask."""
    if settings.metrics_port is not None:
        from ..errors import KtasksError
        from ..metrics import Metrics

        metrics = Metrics()
        try:
            metrics.serve(settings.metrics_port, settings.metrics_host)
        except KtasksError as exc:
            raise click.ClickException(str(exc)) from exc
        app.add_middleware(metrics)
    if settings.report_interval_s > 0:
        from ..reports import Reporter

        app.add_middleware(Reporter(settings.report_interval_s, settings.reports_topic,
                                    settings.reports_retention_ms))


COMMANDS = [worker]
