"""``ktasks dlq``: list, show, replay and purge dead letters.

Every command reads the dead-letter topics with a consumer that has no group
(assign and seek), so looking never commits anything or disturbs a worker.
See docs/dead-letters.md.
"""

from __future__ import annotations

import datetime as _dt
import logging
import pprint
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .. import deadletter as dlt
from ..errors import KtasksError
from ._app import app_option, loaded_app

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["dlq", "COMMANDS"]

F = TypeVar("F", bound=Callable[..., Any])

_INT_HEADERS = frozenset({dlt.H_ORIGINAL_PARTITION, dlt.H_ORIGINAL_OFFSET, dlt.H_ORIGINAL_TIMESTAMP})


def _topic_option(fn: F) -> F:
    return click.option(
        "--topic", "-t", "topics", multiple=True, metavar="TOPIC",
        help="A dead-letter topic, or a task topic (its dead-letter topic is used). Repeatable. "
             "Default: the dead-letter topic of every task topic of the app.",
    )(fn)


def _topics(app: App, given: Sequence[str]) -> list[str]:
    if not given:
        return dlt.dead_letter_topics(app)
    return list(dict.fromkeys(t for topic in given for t in dlt.dead_letter_topics(app, topic)))


def _short_time(iso: str) -> str:
    try:
        moment = _dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return iso
    return moment.astimezone(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def _cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _error_of(letter: dlt.StoredDeadLetter) -> str:
    exc_type = letter.exc_type
    if exc_type is None:
        return letter.decode_error or ""
    short = exc_type.rsplit(".", 1)[-1]
    message = letter.exc_message
    return f"{short}: {message}" if message else short


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def _where(letter: dlt.StoredDeadLetter) -> str:
    return f"{letter.topic}[{letter.partition}]@{letter.offset}"


@click.group("dlq")
def dlq() -> None:
    """Inspect, replay and purge dead-letter topics (docs/dead-letters.md)."""


@dlq.command("list")
@app_option
@_topic_option
@click.option("--limit", "-n", default=50, show_default=True, type=click.IntRange(min=0),
              help="Show the newest N dead letters; 0 shows all.")
def list_(app_spec: str, topics: tuple[str, ...], limit: int) -> None:
    """List dead letters, oldest first: time, task, id, reason, error, attempts, partition/offset."""
    with loaded_app(app_spec) as app:
        names = _topics(app, topics)
        total = sum(end - start for start, end in dlt.pending_counts(app, names).values())
        letters = list(dlt.iter_dead_letters(app, names, tail=limit or None))
        letters.sort(key=lambda x: (x.time, x.topic, x.partition, x.offset))
        if limit:
            letters = letters[-limit:]
        if not letters:
            click.echo(f"no dead letters in {', '.join(names) or '(no topics)'}")
            return
        many = len({x.topic for x in letters}) > 1
        headers = ["TIME", "TASK", "ID", "REASON", "ERROR", "ATTEMPTS"] + (["TOPIC"] if many else [])
        headers.append("PARTITION/OFFSET")
        rows = []
        for x in letters:
            attempts = x.attempts
            row = [_short_time(x.time), _cut(x.task or "?", 40), x.task_id or "?", x.reason or "?",
                   _cut(_error_of(x), 60), "" if attempts is None else str(attempts)]
            if many:
                row.append(x.topic)
            row.append(f"{x.partition}/{x.offset}")
            rows.append(row)
        click.echo(_table(rows, headers))
        click.echo(f"\n{len(letters)} of {total} dead letter(s) in {', '.join(names)}")


def _header_text(name: str, value: bytes | None) -> str:
    if value is None:
        return "(null)"
    if name in _INT_HEADERS:
        number = dlt.int_header([(name, value)], name)
        if number is not None and name == dlt.H_ORIGINAL_TIMESTAMP and number > 0:
            moment = _dt.datetime.fromtimestamp(number / 1000, _dt.timezone.utc)
            return f"{number} ({moment.isoformat(timespec='milliseconds')})"
        if number is not None:
            return str(number)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return repr(value)


@dlq.command("show")
@click.argument("task_id", metavar="ID")
@app_option
@_topic_option
def show(task_id: str, app_spec: str, topics: tuple[str, ...]) -> None:
    """Show every header, the decoded arguments and the full stack trace of the dead letter(s) with ID."""
    with loaded_app(app_spec) as app:
        names = _topics(app, topics)
        found = [x for x in dlt.iter_dead_letters(app, names) if x.matches_id(task_id)]
        if not found:
            raise click.ClickException(f"no dead letter with id {task_id!r} in {', '.join(names)}")
        for n, x in enumerate(found, 1):
            if n > 1:
                click.echo("")
            click.echo(f"dead letter {_where(x)} ({n} of {len(found)})")
            click.echo(f"  task: {x.task or '?'}    id: {x.task_id or '?'}    reason: {x.reason or '?'}")
            click.echo(f"  replays to: {x.origin_topic(app.settings.dead_letter_suffix)}    "
                       f"key: {x.key!r}")
            click.echo("headers:")
            for name, value in x.headers:
                text = "(below)" if name == dlt.H_EXC_STACKTRACE else _header_text(name, value)
                click.echo(f"  {name}: {text}")
            message = x.message
            if message is None:
                click.echo(f"value: does not decode: {x.decode_error}")
                raw = x.value or b""
                click.echo(f"  {len(raw)} bytes: {raw[:200]!r}{' ...' if len(raw) > 200 else ''}")
            else:
                click.echo("envelope:")
                click.echo(f"  task: {message.task}")
                click.echo(f"  id: {message.id}")
                click.echo(f"  attempt: {message.attempt}")
                click.echo(f"  args: {pprint.pformat(message.args, width=100, compact=True)}")
                click.echo(f"  kwargs: {pprint.pformat(message.kwargs, width=100, compact=True)}")
                if message.idempotency_key is not None:
                    click.echo(f"  idempotency key: {message.idempotency_key}")
                created = _dt.datetime.fromtimestamp(message.created, _dt.timezone.utc)
                click.echo(f"  created: {created.isoformat(timespec='milliseconds')}")
                if message.due is not None:
                    due = _dt.datetime.fromtimestamp(message.due, _dt.timezone.utc)
                    click.echo(f"  due: {due.isoformat(timespec='milliseconds')}")
            stack = x.stacktrace
            click.echo("stack trace:" if stack else "stack trace: (none)")
            if stack:
                click.echo(stack.rstrip("\n"))


def _select(letters: list[dlt.StoredDeadLetter], ids: Sequence[str], all_: bool
            ) -> tuple[list[dlt.StoredDeadLetter], int]:
    """The records to replay, and how many older copies of the same task id were left out."""
    chosen = letters if all_ else [x for x in letters if any(x.matches_id(i) for i in ids)]
    latest: dict[str, dlt.StoredDeadLetter] = {}
    anonymous: list[dlt.StoredDeadLetter] = []
    for x in chosen:
        key = x.task_id
        if key is None:
            anonymous.append(x)
            continue
        seen = latest.get(key)
        if seen is None or (x.time, x.timestamp_ms) >= (seen.time, seen.timestamp_ms):
            latest[key] = x
    selected = sorted([*latest.values(), *anonymous], key=lambda x: (x.topic, x.partition, x.offset))
    return selected, len(chosen) - len(selected)


@dlq.command("replay")
@click.option("--id", "ids", multiple=True, metavar="ID", help="Replay the dead letter of this task id. "
              "Repeatable.")
@click.option("--all", "all_", is_flag=True, help="Replay every dead letter in the topics.")
@click.option("--force", is_flag=True, help="Run even if the ledger recorded a success (adds "
              "`ktasks-force: 1`); also replays values that do not decode.")
@app_option
@_topic_option
def replay(ids: tuple[str, ...], all_: bool, force: bool, app_spec: str, topics: tuple[str, ...]) -> None:
    """Republish dead letters, value and key unchanged, to their task topic.

    The replayed records stay in the dead-letter topic (Kafka is append-only):
    run `ktasks dlq purge` afterwards so they are not replayed twice. When a
    task id appears more than once, only its newest dead letter is replayed.
    Values that do not decode as a ktasks message are skipped unless --force.
    """
    if bool(ids) == all_:
        raise click.UsageError("give --id ID (one or more) or --all")
    with loaded_app(app_spec) as app:
        names = _topics(app, topics)
        letters, duplicates = _select(list(dlt.iter_dead_letters(app, names)), ids, all_)
        missing = [i for i in ids if not any(x.matches_id(i) for x in letters)]
        for i in missing:
            click.echo(f"no dead letter with id {i!r} in {', '.join(names)}", err=True)
        if duplicates:
            click.echo(f"{duplicates} older dead letter(s) of the same task id(s) not replayed")
        sent: list[tuple[dlt.StoredDeadLetter, Any]] = []
        skipped = failed = done = 0
        for x in letters:
            if x.message is None and not force:
                click.echo(f"skipped {_where(x)}: value does not decode ({x.decode_error}); "
                           "--force replays it anyway")
                skipped += 1
                continue
            try:
                sent.append((x, dlt.replay(app, x, force=force)))
            except KtasksError as exc:
                failed += 1
                click.echo(f"FAILED {x.task_id or '?'} ({x.task or '?'}) from {_where(x)}: {exc}", err=True)
        timeout_s = max(app.settings.send_timeout_ms / 1000, 5.0)
        for x, future in sent:
            label = f"{x.task_id or '?'} ({x.task or '?'})"
            try:
                meta = future.get(timeout=timeout_s)
            except Exception as exc:  # kafka errors and timeouts alike: report and go on
                failed += 1
                click.echo(f"FAILED {label} from {_where(x)}: {type(exc).__name__}: {exc}", err=True)
                continue
            note = ""
            if x.reason == "commit-failed" and not force:
                note = " (it finished before: the ledger skips it unless --force)"
            click.echo(f"replayed {label} from {_where(x)} to {meta.topic}[{meta.partition}]@{meta.offset}"
                       f"{note}")
            done += 1
        click.echo(f"replayed {done} dead letter(s)" + (f", skipped {skipped}" if skipped else "")
                   + (f", {failed} failed" if failed else "")
                   + (". Run `ktasks dlq purge` to clear them from the dead-letter topic." if done else ""))
        if failed or missing:
            click.get_current_context().exit(1)


@dlq.command("purge")
@app_option
@_topic_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def purge(app_spec: str, topics: tuple[str, ...], yes: bool) -> None:
    """Delete every record in the dead-letter topics (asks first unless --yes).

    Records that arrive after the count was taken are kept.
    """
    with loaded_app(app_spec) as app:
        names = _topics(app, topics)
        bounds = dlt.pending_counts(app, names)
        count = sum(end - start for start, end in bounds.values())
        if not count:
            click.echo(f"nothing to purge in {', '.join(names) or '(no topics)'}")
            return
        present = sorted({tp.topic for tp, (start, end) in bounds.items() if end > start})
        if not yes:
            click.confirm(f"Delete {count} dead letter(s) from {', '.join(present)}? This cannot be undone",
                          abort=True)
        removed = dlt.purge(app, names, bounds)
        click.echo(f"purged {removed} dead letter(s) from {', '.join(present)}")


COMMANDS = [dlq]
