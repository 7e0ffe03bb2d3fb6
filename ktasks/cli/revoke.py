"""``ktasks revoke``: revoke tasks by id."""

from __future__ import annotations

import logging

import click

from ..errors import KtasksError
from ._app import app_option, load_app

logger = logging.getLogger(__name__)


@click.command()
@app_option
@click.argument("task_ids", nargs=-1, required=True, metavar="ID...")
def revoke(app_spec: str, task_ids: tuple[str, ...]) -> None:
    """Revoke tasks: any of them that has not started does not run.

    Writes to the app's compacted revocations topic, which every worker reads
    (also workers started later); a revoked task is recorded in the ledger as
    ``revoked``. A running task is not interrupted. See docs/scheduling.md.
    """
    app = load_app(app_spec)
    try:
        ids = app.revoke(*task_ids)
    except KtasksError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
    click.echo(f"revoked {len(ids)} task(s)")


COMMANDS = [revoke]
