"""``ktasks topics create|list|check``: the app's topics, ahead of time.

``create`` makes every topic the app uses: each task topic, its retry topics
(one per delay tier), its dead-letter topic and, with ``ledger_changelog`` on,
its ledger changelog (compacted), with the configured partitions and
replication factor; then the app's own topics: revocations, far ETAs, the
beat (when the app declares periodic tasks), results and replies, chord
joins, and the worker reports. A worker creates each on first use when
``auto_create_topics`` is on; with it off, these must exist, or the worker
waits 30 s for the revocations at every start. A topic that already exists is
reported and never changed; one with fewer partitions than configured gets a WARNING line, since
adding partitions would move keys to other partitions and break per-key order.
``check`` compares every topic with the settings (partitions, replication
factor, ``topic_configs`` and ``min_insync_replicas``, and a changelog's
``cleanup.policy`` and ``retention.ms``) and exits 1 on a difference.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import click

from ..app import App
from ..errors import KtasksError
from ..ledger_changelog import changelog_configs, changelog_topic
from ..reports import report_topic_configs
from ..results.records import chords_topic, result_topic_specs
from ..schedule.topics import beat_topic, compacted_configs, revocations_topic, scheduled_topic
from ..topics import TopicReport
from ._app import app_option, loaded_app

__all__ = ["COMMANDS", "topics", "planned_topics", "PlannedTopic"]


@dataclass(frozen=True)
class PlannedTopic:
    """One topic the app uses: its name, role and the partitions it should have."""

    name: str
    role: str
    partitions: int
    #: Topic configs it needs besides the settings' (a ledger changelog is compacted).
    configs: dict[str, str] = field(default_factory=dict, hash=False, compare=False)


def planned_topics(app: App, partitions: int | None = None) -> list[PlannedTopic]:
    """Every topic of the app: task topics, then their retry tiers, dead-letter topic and ledger changelog,
    then the app's own topics (:func:`app_topics`).

    The partition count of a task topic and those that go with it is
    ``partitions`` when given, else the ``partitions`` option of the tasks sent
    to that topic, else the app's ``partitions`` setting.
    """
    per_topic: dict[str, int] = {}
    for task in app.tasks.values():
        if task.options.partitions:
            per_topic[task.topic] = max(per_topic.get(task.topic, 0), task.options.partitions)
    plan: list[PlannedTopic] = []
    for topic in app.task_topics():
        wanted = partitions or per_topic.get(topic) or app.settings.partitions
        plan.append(PlannedTopic(topic, "tasks", wanted))
        for retry in app.retry_topics(topic):
            plan.append(PlannedTopic(retry, "retries", wanted))
        plan.append(PlannedTopic(app.dead_letter_topic(topic), "dead letters", wanted))
        if app.settings.ledger_enabled and app.settings.ledger_changelog:
            plan.append(PlannedTopic(changelog_topic(app.settings, topic), "ledger changelog", wanted,
                                     changelog_configs(app.settings)))
    return plan + app_topics(app)


def app_topics(app: App) -> list[PlannedTopic]:
    """The app's own topics, with the partitions and configs a worker would create them with."""
    s = app.settings
    plan = [PlannedTopic(revocations_topic(app), "revocations", 1, compacted_configs(s.revoke_retention_s * 1000)),
            PlannedTopic(scheduled_topic(app), "ETAs beyond the largest delay tier", s.scheduled_partitions,
                         compacted_configs())]
    if app.periodic_tasks:
        plan.append(PlannedTopic(beat_topic(app), "periodic tasks (beat)", 1, compacted_configs()))
    for topic, (count, configs) in result_topic_specs(app).items():
        plan.append(PlannedTopic(topic, "results" if topic.endswith(".results") else "replies", count, configs))
    plan.append(PlannedTopic(chords_topic(app), "chord joins", s.partitions))
    if s.report_interval_s > 0:
        plan.append(PlannedTopic(s.reports_topic, "worker reports (every app)", 1,
                                 report_topic_configs(s.reports_retention_ms)))
    return plan


@click.group()
def topics() -> None:
    """Create, list and check the app's Kafka topics."""


@topics.command()
@app_option
@click.option("--partitions", type=click.IntRange(min=1), default=None,
              help="Partitions of topics to create. [default: the app's `partitions` setting]")
@click.option("--replication-factor", type=click.IntRange(min=1), default=None,
              help="Replication factor of topics to create. [default: the app's `replication_factor`]")
def create(app_spec: str, partitions: int | None, replication_factor: int | None) -> None:
    """Create the app's task, retry, dead-letter and ledger changelog topics, and its own (revocations, far ETAs,
    beat, results, replies, chords, reports); report those that exist."""
    with loaded_app(app_spec) as app:
        plan = planned_topics(app, partitions)
        rf = replication_factor or app.settings.replication_factor
        # One create request per partition count and config set (changelogs are compacted).
        batches: dict[tuple[int, tuple[tuple[str, str], ...]], list[str]] = {}
        for item in plan:
            batches.setdefault((item.partitions, tuple(sorted(item.configs.items()))), []).append(item.name)
        reports: dict[str, TopicReport] = {}
        for (count, configs), names in batches.items():
            for report in app.topics.ensure(names, partitions=count, replication_factor=rf, configs=dict(configs)):
                reports[report.name] = report
        short = 0
        for item in plan:
            r = reports[item.name]
            if r.created:
                click.echo(f"created  {r.name}  ({r.partitions} partitions, replication factor {rf}; "
                           f"{item.role})")
            elif r.short:
                short += 1
                click.echo(f"WARNING  {r.name} exists with {r.partitions} partitions, fewer than the configured "
                           f"{r.wanted_partitions}; not changed (adding partitions moves keys to other "
                           f"partitions and breaks per-key order)")
            else:
                click.echo(f"exists   {r.name}  ({r.partitions} partitions; {item.role})")
        if short:
            click.echo(f"{short} topic(s) have fewer partitions than configured", err=True)


@topics.command(name="list")
@app_option
def list_(app_spec: str) -> None:
    """List the app's topics with their partition counts (or `missing`)."""
    with loaded_app(app_spec) as app:
        plan = planned_topics(app)
        try:
            described = app.topics.admin().describe_topics([p.name for p in plan])
        except KtasksError:
            raise
        except Exception as exc:  # kafka-python errors: one line, not a traceback
            raise click.ClickException(f"describing topics: {exc}") from exc
        counts: dict[str, int] = {}
        for entry in described:
            if not entry.get("error_code") and entry.get("partitions"):
                counts[entry.get("name", entry.get("topic"))] = len(entry["partitions"])
        width = max(len(p.name) for p in plan)
        for item in plan:
            have = counts.get(item.name)
            state = "missing" if have is None else f"{have} partitions"
            note = ""
            if have is not None and have < item.partitions:
                note = f"  WARNING fewer than the configured {item.partitions}"
            click.echo(f"{item.name:<{width}}  {state:<15} {item.role}{note}")


@topics.command()
@app_option
@click.pass_context
def check(ctx: click.Context, app_spec: str) -> None:
    """Check the app's topics against the settings: partitions, replication factor, topic configs.

    Prints one line per topic; exit code 1 if any is missing or differs.
    """
    with loaded_app(app_spec) as app:
        plan = planned_topics(app)
        checks = app.topics.check([p.name for p in plan], {p.name: p.partitions for p in plan},
                                  {p.name: p.configs for p in plan if p.configs})
    bad = 0
    width = max(len(c.name) for c in checks)
    for result in checks:
        problems = result.problems
        if problems:
            bad += 1
            click.echo(f"DIFFERS  {result.name:<{width}}  " + "; ".join(problems))
        else:
            click.echo(f"ok       {result.name:<{width}}  ({result.partitions} partitions, replication factor "
                       f"{result.replication_factor})")
    if bad:
        click.echo(f"{bad} of {len(checks)} topic(s) differ from the settings; ktasks never changes an "
                   "existing topic (kafka-configs.sh --alter does)", err=True)
        ctx.exit(1)


COMMANDS = [topics]
