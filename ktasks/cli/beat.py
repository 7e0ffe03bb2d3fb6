"""``ktasks beat``: run the periodic tasks standalone, or list them."""

from __future__ import annotations

import logging
import signal
import time
from typing import Any

import click

from ..logs import configure_logging
from ._app import load_app, resolve_app_spec

logger = logging.getLogger(__name__)

_APP_HELP = "The ktasks App (module:attribute); default: KTASKS_APP or the project's config."


def _app(spec: str | None) -> Any:
    return load_app(resolve_app_spec(spec, required=True))  # type: ignore[arg-type]


@click.group(invoke_without_command=True)
@click.option("-A", "--app", "app_spec", default=None, metavar="MODULE[:ATTR]", help=_APP_HELP)
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.pass_context
def beat(ctx: click.Context, app_spec: str | None, loglevel: str) -> None:
    """Run the app's periodic tasks (without a worker); ``beat list`` shows them.

    Any number of ``ktasks beat`` and ``ktasks worker --beat`` processes may run:
    the one that owns the app's beat topic fires, the others take over within
    ``session_timeout_ms`` if it dies. Stops on SIGTERM or SIGINT.
    """
    ctx.obj = app_spec
    if ctx.invoked_subcommand is not None:
        return
    configure_logging(loglevel, "text", process_name="beat")
    from ..schedule.beat import BeatRunner

    app = _app(app_spec)
    if not app.periodic_tasks:
        raise click.ClickException(f"app {app.name!r} declares no periodic tasks (app.add_periodic_task)")
    runner = BeatRunner(app)

    def on_signal(signum: int, frame: Any) -> None:
        logger.info("beat: %s received, stopping", signal.Signals(signum).name)
        runner.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    runner.start()
    while runner.is_alive():
        runner.join(timeout=0.5)
    app.close()


@beat.command("list")
@click.option("-A", "--app", "app_spec", default=None, metavar="MODULE[:ATTR]", help=_APP_HELP)
@click.pass_context
def list_(ctx: click.Context, app_spec: str | None) -> None:
    """The periodic tasks: schedule, task, catch_up, last and next fire, and the current owner."""
    from ..schedule.beat import read_beat_state

    app = _app(app_spec or ctx.obj)
    try:
        last, owner = read_beat_state(app)
    finally:
        app.close()
    now = time.time()
    if owner:
        click.echo(f"owner: {owner.get('owner', '?')} since {_when(owner.get('since'))}")
    else:
        click.echo("owner: none yet (no beat has run)")
    rows = [("NAME", "SCHEDULE", "TASK", "CATCH_UP", "LAST FIRE", "NEXT FIRE")]
    for name, entry in sorted(app.periodic_tasks.items()):
        fired = last.get(name)
        nxt = entry.next_after(max(now, fired or 0.0))
        rows.append((name, entry.describe(), entry.task, "yes" if entry.catch_up else "no", _when(fired), _when(nxt)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


def _when(epoch_s: float | None) -> str:
    if not epoch_s:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(epoch_s)) + "Z"


COMMANDS = [beat]
