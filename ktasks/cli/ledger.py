"""``ktasks ledger``: look into and maintain a host's idempotency ledger.

The ledger file is found from, in order: ``--ledger PATH``; ``-A module:app``
(that app's ``ledger_path`` setting, else its default path); the environment
variables ``KTASKS_LEDGER`` and ``KTASKS_LEDGER_PATH``; the app named by
``KTASKS_APP`` or the project's config (``[tool.ktasks]`` in pyproject.toml, or
ktasks.toml); else the only ledger in the default directory
(``$XDG_STATE_HOME/ktasks``).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import os
import re
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import click

from ..errors import KtasksError
from ..ledger import Entry, Ledger
from ..settings import SETTINGS
from ._app import load_app, resolve_app_spec

logger = logging.getLogger(__name__)

__all__ = ["COMMANDS", "ledger", "parse_duration", "resolve_ledger_path"]

F = TypeVar("F", bound=Callable[..., Any])

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhd]?)\s*$", re.IGNORECASE)


def parse_duration(text: str) -> float:
    """``"90"``, ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1.5h"`` -> seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration (a number with an optional s, m, h or d suffix)")
    return float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]


class _Duration(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def resolve_ledger_path(ledger_path: str | None, app_ref: str | None,
                        environ: Mapping[str, str] | None = None) -> Path:
    """Where the ledger is; see the module docstring for the order. Raises ``click.UsageError``."""
    env = os.environ if environ is None else environ
    if ledger_path:
        return Path(ledger_path).expanduser()
    if app_ref:
        return Ledger.path_for_app(load_app(app_ref))
    for var in ("KTASKS_LEDGER", SETTINGS["ledger_path"].env_var):
        if env.get(var):
            return Path(env[var]).expanduser()
    configured = resolve_app_spec(None, required=False) if environ is None else None
    if configured:
        return Ledger.path_for_app(load_app(configured))
    directory = Ledger.default_path("x").parent
    candidates = sorted(directory.glob("*.ledger.sqlite3")) if directory.is_dir() else []
    if len(candidates) == 1:
        return candidates[0]
    where = f" ({len(candidates)} ledgers in {directory})" if candidates else ""
    raise click.UsageError("which ledger? pass --ledger PATH or -A module:app, or set KTASKS_LEDGER" + where)


def _ledger_options(fn: F) -> F:
    # On the group and on each command, so both `ktasks ledger --ledger X show K`
    # and `ktasks ledger show K --ledger X` work; the command's own value wins.
    fn = click.option("-A", "--app", "app_ref", metavar="MODULE:APP",
                      help="Use this app's ledger (its ledger_path setting, else the default path).")(fn)
    fn = click.option("--ledger", "ledger_path", metavar="PATH", type=click.Path(dir_okay=False),
                      help="Ledger file (also KTASKS_LEDGER or KTASKS_LEDGER_PATH).")(fn)
    return fn


def _open(ctx: click.Context, ledger_path: str | None, app_ref: str | None) -> Ledger:
    group = ctx.find_object(dict) or {}
    if not ledger_path and not app_ref:
        ledger_path, app_ref = group.get("ledger_path"), group.get("app_ref")
    path = resolve_ledger_path(ledger_path, app_ref)
    if not path.exists():
        # Opening would create an empty ledger: a typo must not look like "no entries".
        raise click.ClickException(f"no ledger at {path}")
    try:
        return Ledger(path)
    except KtasksError as exc:
        raise click.ClickException(str(exc)) from exc


def _when(t: float | None, now: float | None = None) -> str:
    if t is None:
        return "-"
    stamp = _dt.datetime.fromtimestamp(t).astimezone().isoformat(timespec="seconds")
    return f"{stamp} ({_age((now or time.time()) - t)} ago)"


def _age(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


@click.group("ledger")
@_ledger_options
@click.pass_context
def ledger(ctx: click.Context, ledger_path: str | None, app_ref: str | None) -> None:
    """Inspect and prune the idempotency ledger of this host."""
    ctx.ensure_object(dict)
    ctx.obj.update(ledger_path=ledger_path, app_ref=app_ref)


@ledger.command("show")
@click.argument("key")
@_ledger_options
@click.option("--task", "task_name", default=None, metavar="NAME",
              help="The task whose entry to show, when several tasks have one under KEY.")
@click.option("--json", "as_json", is_flag=True, help="Print the entry as JSON.")
@click.pass_context
def show(ctx: click.Context, key: str, ledger_path: str | None, app_ref: str | None, task_name: str | None,
         as_json: bool) -> None:
    """Show the ledger entry of KEY (an idempotency key or task id)."""
    with _open(ctx, ledger_path, app_ref) as led:
        entries = led.find(key)
    if task_name is not None:
        entries = [e for e in entries if e.task == task_name]
    if not entries:
        raise click.ClickException(f"no entry for {key!r}" + (f" of task {task_name!r}" if task_name else "")
                                   + f" in {led.path}")
    if len(entries) > 1:
        # A key names one execution of one task; several tasks may use the same key.
        raise click.ClickException(f"{key!r} has entries of {len(entries)} tasks "
                                   f"({', '.join(e.task or '?' for e in entries)}): pass --task NAME")
    entry = entries[0]
    if as_json:
        click.echo(json.dumps(entry.as_dict(), indent=2, default=repr))
        return
    click.echo(_format_entry(entry))


def _format_entry(entry: Entry) -> str:
    d = entry.as_dict()
    rows = [
        ("key", entry.key),
        ("task", entry.task or "-"),
        ("state", entry.state),
        ("attempt", str(entry.attempt)),
        ("starts", f"{entry.starts} unfinished, {entry.total_starts} in all"),
        ("host / pid", f"{entry.host or '-'} / {entry.pid if entry.pid is not None else '-'}"),
        ("started", _when(entry.started_at)),
        ("finished", _when(entry.finished_at)),
        ("duration", "-" if entry.duration_s is None else f"{entry.duration_s:.3f} s"),
    ]
    if entry.state == "succeeded":
        rows.append(("result", repr(d["result"])))
    if d["note"]:
        rows.append(("note", d["note"]))
    if entry.exc_type:
        label = "error" if entry.state == "failed" else "last error"
        rows.append((label, f"{entry.exc_type}: {entry.exc_message}"))
    text = "\n".join(f"{name + ':':<12} {value}" for name, value in rows)
    if entry.traceback:
        text += "\ntraceback:\n" + entry.traceback.rstrip("\n")
    return text


@ledger.command("stats")
@_ledger_options
@click.option("--json", "as_json", is_flag=True, help="Print the figures as JSON.")
@click.pass_context
def stats(ctx: click.Context, ledger_path: str | None, app_ref: str | None, as_json: bool) -> None:
    """Counts by state, file size and the oldest entry."""
    with _open(ctx, ledger_path, app_ref) as led:
        figures = led.stats()
    if as_json:
        click.echo(json.dumps(figures, indent=2))
        return
    lines = [
        f"ledger:          {figures['path']} (schema {figures['schema_version']})",
        f"entries:         {figures['total']:,}",
    ]
    lines += [f"  {state + ':':<14} {count:,}" for state, count in figures["by_state"].items()]
    lines += [
        f"size:            {_bytes(figures['size_bytes'])} (+ {_bytes(figures['wal_bytes'])} WAL)",
        f"oldest entry:    {_when(figures['oldest_entry_at'])}",
        f"oldest finished: {_when(figures['oldest_finished_at'])}",
        f"oldest started:  {_when(figures['oldest_unfinished_at'])}",
    ]
    if figures["most_unfinished_starts"] > 1:
        lines.append(f"most starts of an unfinished key: {figures['most_unfinished_starts']}")
    click.echo("\n".join(lines))


@ledger.command("prune")
@_ledger_options
@click.option("--older-than", "older_than", type=_Duration(), default=None, metavar="DURATION",
              help="Delete finished entries older than this: 90s, 30m, 12h, 7d "
                   "[default: the app's ledger_retention_s, else KTASKS_LEDGER_RETENTION_S or 7d].")
@click.option("--batch", type=click.IntRange(min=1), default=5000, show_default=True,
              help="Rows deleted per transaction (the write lock is held for one batch at a time).")
@click.pass_context
def prune(ctx: click.Context, ledger_path: str | None, app_ref: str | None, older_than: float | None,
          batch: int) -> None:
    """Delete finished entries older than --older-than. Safe while workers run."""
    if older_than is None:
        older_than = _retention(app_ref or (ctx.find_object(dict) or {}).get("app_ref"))
    with _open(ctx, ledger_path, app_ref) as led:
        started = time.monotonic()
        count = led.prune(older_than, batch)
    click.echo(f"pruned {count:,} entries finished more than {_age(older_than)} ago "
               f"({time.monotonic() - started:.2f} s)")


def _retention(app_ref: str | None) -> float:
    if app_ref:
        return float(load_app(app_ref).settings.ledger_retention_s)
    setting = SETTINGS["ledger_retention_s"]
    raw = os.environ.get(setting.env_var)
    try:
        return float(setting.coerce(raw, f"environment {setting.env_var}") if raw else setting.default)
    except KtasksError as exc:
        raise click.UsageError(str(exc)) from exc


COMMANDS = [ledger]
