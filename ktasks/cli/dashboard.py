"""``ktasks dashboard``: serve the web dashboard of an app (Starlette, run by uvicorn)."""

from __future__ import annotations

import logging

import click

from ..logs import configure_logging
from ._app import app_option, loaded_app

logger = logging.getLogger(__name__)

__all__ = ["dashboard", "COMMANDS"]


@click.command()
@app_option
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind; the default keeps the dashboard to this machine.")
@click.option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True, help="Port to bind.")
@click.option("--read-only", is_flag=True, help="No actions, whatever else is given (the default).")
@click.option("--allow-actions", is_flag=True,
              help="Allow replaying and purging dead letters from the page (each asks to confirm).")
@click.option("--refresh", "refresh_s", type=click.FloatRange(min=0.2), default=2.0, show_default=True,
              help="Seconds between reads of Kafka and between page updates.")
@click.option("-l", "--loglevel", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
def dashboard(app_spec: str, host: str, port: int, read_only: bool, allow_actions: bool, refresh_s: float,
              loglevel: str) -> None:
    """Serve a web dashboard of the app's groups and workers, lag, throughput and dead letters.

    Reads only Kafka: workers' reports (`report_interval_s`), the admin API
    for committed and end offsets, and the dead-letter topics. Read-only
    unless --allow-actions is given; binds 127.0.0.1 unless --host says
    otherwise.
    """
    if read_only and allow_actions:
        raise click.UsageError("--read-only and --allow-actions contradict each other: give one")
    configure_logging(loglevel, "text", process_name="dashboard")
    try:
        import uvicorn

        from ..dashboard import create_app
    except ImportError as exc:
        raise click.ClickException(f"the dashboard needs its extra: pip install 'ktasks[dashboard]' ({exc})") from exc
    with loaded_app(app_spec) as app:
        web = create_app(app, allow_actions=allow_actions, refresh_s=refresh_s)
        logger.info("dashboard of app %s on http://%s:%d/ (%s)", app.name, host, port,
                    "actions allowed" if allow_actions else "read-only")
        uvicorn.run(web, host=host, port=port, log_level="warning", access_log=False)


COMMANDS = [dashboard]
