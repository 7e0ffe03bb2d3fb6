"""The one definition of every ktasks setting.

Settings come from, in order of precedence: keyword arguments to ``App(...)``
(or command-line flags), then ``KTASKS_<NAME>`` environment variables, then the
defaults below. Units are part of the names (``_ms``, ``_s``). Unknown keys and
values of the wrong type are rejected with an error naming the key.

``docs/configuration.md`` is generated from :data:`SETTINGS` by
``python -m ktasks.docgen``, so the reference cannot drift from the code.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .errors import ConfigurationError

__all__ = ["Setting", "SETTINGS", "Settings", "KAFKA_PASSTHROUGH"]


@dataclass(frozen=True)
class Setting:
    """One setting: its name, type, default, and what it does."""

    name: str
    type: type
    default: Any
    doc: str
    group: str
    nullable: bool = False
    choices: tuple[Any, ...] | None = None

    @property
    def env_var(self) -> str:
        return "KTASKS_" + self.name.upper()

    def coerce(self, value: Any, source: str) -> Any:
        """Check (and, for strings from the environment, convert) one value."""
        if value is None:
            if self.nullable:
                return None
            raise ConfigurationError(f"setting {self.name!r} ({source}) must not be None")
        if isinstance(value, str) and source.startswith("environment"):
            if self.nullable and value.strip().lower() in ("", "none", "null"):
                return None
            if self.type is not str:
                value = _parse_str(self, value, source)
        elif isinstance(value, str) and self.type is not str:
            value = _parse_str(self, value, source)
        if self.type is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if self.type is int and isinstance(value, bool):
            raise ConfigurationError(f"setting {self.name!r} ({source}) must be int, got bool")
        if not isinstance(value, self.type):
            raise ConfigurationError(
                f"setting {self.name!r} ({source}) must be {self.type.__name__}, "
                f"got {type(value).__name__} {value!r}"
            )
        if self.choices is not None and value not in self.choices:
            raise ConfigurationError(
                f"setting {self.name!r} ({source}) must be one of {', '.join(map(repr, self.choices))}, "
                f"got {value!r}"
            )
        if isinstance(value, list) and not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                         for v in value):
            raise ConfigurationError(f"setting {self.name!r} ({source}) must be a list of positive ints, "
                                     f"got {value!r}")
        if isinstance(value, list) and not value:
            raise ConfigurationError(f"setting {self.name!r} ({source}) must not be empty")
        if isinstance(value, (int, float)) and value < 0:
            raise ConfigurationError(f"setting {self.name!r} ({source}) must not be negative, got {value!r}")
        return value


def _parse_str(setting: Setting, raw: str, source: str) -> Any:
    if setting.nullable and raw.strip().lower() in ("", "none", "null"):
        return None
    try:
        if setting.type is bool:
            low = raw.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if setting.type is int:
            return int(raw)
        if setting.type is float:
            return float(raw)
        if setting.type in (dict, list):
            return json.loads(raw)
    except ValueError as exc:
        raise ConfigurationError(
            f"setting {setting.name!r} ({source}) must be {setting.type.__name__}, got {raw!r}"
        ) from exc
    return raw


_S: list[Setting] = []


def _add(name: str, type_: type, default: Any, doc: str, group: str, **kw: Any) -> None:
    _S.append(Setting(name, type_, default, doc, group, **kw))


# -- connection ------------------------------------------------------------------
G = "Connection"
_add("bootstrap_servers", str, "127.0.0.1:9092", "Comma-separated `host:port` list of Kafka brokers.", G)
_add("client_id", str, None, "Client id sent to Kafka; defaults to `ktasks-<app>`.", G, nullable=True)
_add("security_protocol", str, "PLAINTEXT", "Passed to kafka-python.", G,
     choices=("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"))
_add("sasl_mechanism", str, None, "SASL mechanism (`PLAIN`, `SCRAM-SHA-256`, `SCRAM-SHA-512`, `OAUTHBEARER`).",
     G, nullable=True)
_add("sasl_plain_username", str, None, "SASL username.", G, nullable=True)
_add("sasl_plain_password", str, None, "SASL password.", G, nullable=True)
_add("ssl_cafile", str, None, "CA bundle for SSL.", G, nullable=True)
_add("ssl_certfile", str, None, "Client certificate for SSL.", G, nullable=True)
_add("ssl_keyfile", str, None, "Client key for SSL.", G, nullable=True)
_add("ssl_password", str, None, "Password of the SSL key.", G, nullable=True)
_add("kafka_options", dict, {}, "Further kafka-python settings, for example `{\"request_timeout_ms\": 20000}`. "
     "Each client (consumer, producer, admin) gets the keys it accepts; a key no client accepts is refused.", G)

# -- topics ----------------------------------------------------------------------
G = "Topics"
_add("default_topic", str, None, "Topic for tasks that name none; defaults to `<app>.tasks`.", G, nullable=True)
_add("partitions", int, 6, "Partitions of topics that ktasks creates.", G)
_add("replication_factor", int, 1, "Replication factor of topics that ktasks creates (use 3 in production).",
     G)
_add("min_insync_replicas", int, None, "`min.insync.replicas` of topics that ktasks creates: with `acks=all`, "
     "a write succeeds only once this many replicas have it. None keeps the broker's default. Use 2 with "
     "replication factor 3. Checked by `ktasks topics check`.", G, nullable=True)
_add("topic_configs", dict, {}, "Kafka topic configs applied to topics that ktasks creates and checked by "
     "`ktasks topics check`, for example `{\"retention.ms\": \"604800000\"}`. Values are strings (ints "
     "are converted); `min.insync.replicas` goes in `min_insync_replicas` instead.", G)
_add("auto_create_topics", bool, True, "Create task, retry and dead-letter topics on first use.", G)
_add("dead_letter_suffix", str, ".DLT", "Suffix of a topic's dead-letter topic.", G)
_add("retry_suffix", str, ".retry", "Suffix of a topic's retry topics, followed by the delay tier.", G)

# -- enqueueing ------------------------------------------------------------------
G = "Enqueueing"
_add("eager", bool, False, "Run tasks inline at call time (for unit tests), with the same encoding checks, "
     "simulated retries and an eager ledger; see docs/testing.md.", G)
_add("eager_propagates", bool, False, "In eager mode, `delay()` raises the exception of a task that ended "
     "in the dead-letter topic (otherwise only `EagerResult.get()` does).", G)
_add("send_timeout_ms", int, 10000, "Longest a `delay()` may block when the broker is unreachable, and "
     "the deadline for its acknowledgement.", G)
_add("linger_ms", int, 0, "Producer batching delay: messages sent within this window share a request. 0 (the "
     "default) sends at once and still batches what queues while a request is in flight: a web request's "
     "single `delay()` reaches a worker sooner (enqueue-to-start p50 2.3 ms against 7.2 ms at 5 ms), and a loop of "
     "`delay()` calls is as fast (docs/performance.md).", G)
_add("max_message_bytes", int, 1048576, "Largest encoded message accepted; larger ones fail before sending.",
     G)
_add("compression_type", str, None, "Producer compression (`gzip`, `snappy`, `lz4`, `zstd`).", G,
     nullable=True, choices=(None, "gzip", "snappy", "lz4", "zstd"))

# -- worker ----------------------------------------------------------------------
G = "Worker"
_add("concurrency", int, 0, "Child processes; 0 means the number of CPUs.", G)
_add("group_id", str, None, "Consumer group; defaults to the app's name.", G, nullable=True)
_add("group_instance_id", str, None, "Static membership id; a restart within the session timeout keeps "
     "the same partitions without a rebalance.", G, nullable=True)
_add("assignor", str, "balanced", "Partition assignment strategy. ``balanced`` (ktasks' own, cooperative) "
     "balances every task topic and retry tier on its own and moves only what must move; the others are "
     "kafka-python's, which balance partition counts over all topics together.", G,
     choices=("balanced", "cooperative-sticky", "range", "roundrobin", "sticky"))
_add("session_timeout_ms", int, 10000, "A worker silent this long is declared dead and its partitions "
     "move (Kafka's client default is 45000).", G)
_add("heartbeat_interval_ms", int, 1000, "Heartbeat period; keep below a third of the session timeout.", G)
_add("max_poll_interval_ms", int, 300000, "Kafka's limit between polls. The worker polls continuously while "
     "tasks run, so long tasks never hit it.", G)
_add("poll_timeout_ms", int, 100, "Longest the worker blocks in one poll when idle.", G)
_add("commit_interval_ms", int, 200, "Finished offsets are committed in batches at this period.", G)
_add("prefetch_per_partition", int, 1000, "Records buffered per partition before it is paused.", G)
_add("max_batch", int, 64, "Most records handed to one child at once when there is a backlog.", G)
_add("revoke_timeout_ms", int, 20000, "On revoke, longest wait for in-flight tasks of that partition "
     "before committing what finished and releasing it.", G)
_add("shutdown_timeout_ms", int, 60000, "Warm shutdown waits this long for in-flight tasks.", G)
_add("shutdown_commit_timeout_ms", int, 30000, "Warm shutdown: longest it keeps trying its final commits "
     "(waiting out a rebalance and committing through the revoke) before it exits 4 with the count of finished "
     "records left uncommitted.", G)
_add("async_concurrency", int, 50, "Coroutines in flight per child when the app has `async def` tasks "
     "(each child then runs an event loop); see docs/concepts.md#async-tasks.", G)
_add("max_tasks_per_child", int, 0, "Replace a child after this many tasks; 0 means never.", G)
_add("auto_offset_reset", str, "earliest", "Where a new group starts.", G, choices=("earliest", "latest"))
_add("commit_retry_deadline_ms", int, 30000, "Retriable commit errors are retried with backoff up to this.",
     G)

# -- ledger ----------------------------------------------------------------------
G = "Ledger"
_add("ledger_enabled", bool, True, "Record every execution so a redelivered task never runs twice.", G)
_add("ledger_path", str, None, "SQLite file of the ledger; defaults to "
     "`~/.local/state/ktasks/<group>.ledger.sqlite3`.", G, nullable=True)
_add("ledger_retention_s", int, 7 * 24 * 3600, "Ledger entries older than this are pruned.", G)
_add("ledger_changelog", bool, True, "Also write every ledger transition a redelivery must see (success, "
     "failure, poison, start count) to a compacted changelog topic co-partitioned with the task topic, and "
     "restore a partition's entries into the local ledger before running its records, so idempotency "
     "follows a partition to another host; see docs/ledger.md#the-changelog.", G)
_add("ledger_changelog_max_unacked", int, 500, "Most finished tasks whose changelog record the broker has not "
     "acknowledged yet: at this many the worker starts no new task until it is back under half of it. "
     "With the broker unreachable, tasks finished and not acknowledged run again elsewhere after a kill; "
     "this bounds how many.", G)
_add("transactional", bool, False, "Exactly-once for Kafka effects: the records a task sends (its `delay()` "
     "calls, its result, its chain step or chord join) and its offset commit go in one Kafka transaction, all "
     "or none (``ktasks worker --transactional``; docs/results.md).", G)
_add("transaction_timeout_ms", int, 10000, "With ``transactional``: the broker aborts a transaction left open "
     "this long (a worker killed mid-transaction and not restarted); `read_committed` readers of its "
     "partitions wait that long at most.", G)
_add("ledger_changelog_suffix", str, ".ledger", "Name of a task topic's changelog: the task topic's name "
     "followed by this.", G)
_add("ledger_restore_timeout_ms", int, 30000, "Longest a worker reads a newly assigned partition's changelog "
     "before it runs that partition's records anyway (logged as an error).", G)
_add("max_starts", int, 3, "A task started this many times without finishing goes to the dead-letter topic.",
     G)

# -- retries ---------------------------------------------------------------------
G = "Retries"
_add("max_retries", int, 3, "Default retries of a failing task before it goes to the dead-letter topic.", G)
_add("retry_backoff_ms", int, 1000, "Delay before the first retry; doubled each attempt.", G)
_add("retry_backoff_max_ms", int, 600000, "Longest retry delay.", G)
_add("retry_jitter", bool, True, "Randomise retry delays (full jitter) to spread load.", G)
_add("retry_tiers_ms", list, [1000, 10000, 60000, 600000], "Delay tiers: one retry topic each; a retry "
     "goes to the largest tier not above its delay.", G)

# -- scheduling ------------------------------------------------------------------
G = "Scheduling"
_add("revoke_retention_s", int, 7 * 24 * 3600, "A revocation (`app.revoke`, `ktasks revoke`) is kept and honoured "
     "this long; the revocations topic deletes older ones.", G)
_add("scheduled_partitions", int, 4, "Partitions of the scheduled-tasks topic (`<app>.scheduled`) when ktasks "
     "creates it: ETAs beyond the largest delay tier are spread over the workers by these.", G)
_add("beat_interval_ms", int, 200, "How often the beat owner and the ETA scheduler look for what is due; the "
     "worst lateness of a periodic fire or a long ETA beside the time to publish it.", G)

# -- monitoring ------------------------------------------------------------------
G = "Monitoring"
_add("metrics_port", int, None, "Serve Prometheus metrics at `http://<metrics_host>:<port>/metrics` from the "
     "worker parent (`ktasks worker --metrics-port`); none means off. See docs/monitoring.md.", G,
     nullable=True)
_add("metrics_host", str, "127.0.0.1", "Address the metrics endpoint binds to; `0.0.0.0` lets a Prometheus on "
     "another host scrape it.", G)
_add("report_interval_s", float, 5.0, "A worker publishes a report of itself (host, pid, partitions, counts, "
     "children, running tasks) this often, for `ktasks inspect` and `ktasks dashboard`; 0 means never.", G)
_add("reports_topic", str, "ktasks.reports", "Topic of the worker reports (one for every app on the cluster).",
     G)
_add("reports_retention_ms", int, 3600000, "Retention of the reports topic when ktasks creates it: reports are "
     "only looked at while recent.", G)

# -- results ---------------------------------------------------------------------
G = "Results"
_add("store_results", bool, False, "Publish the result of every task (value or failure) so `handle.get()` and "
     "`app.result(task_id)` can read it; per task, `@app.task(store_result=True)`. See docs/results.md.", G)
_add("result_expires_s", int, 24 * 3600, "A stored result is kept this long: the retention of the results "
     "and replies topics, and `get()` on an older result raises `ResultExpired`.", G)
_add("reply_partitions", int, 16, "Partitions of the `<app>.replies` topic when ktasks creates it; each "
     "sending process reads one of them, so more partitions mean fewer other processes' replies read.", G)
_add("results_partitions", int, 12, "Partitions of the `<app>.results` topic when ktasks creates it; a "
     "lookup by id reads one partition, so its cost is the live results divided by this.", G)
_add("chord_join", bool, True, "The worker counts chord members on `<app>.chords` (a consumer in group "
     "`<group>.chords` beside the task consumer); turn off only on workers that should not join chords.", G)

# -- testing ---------------------------------------------------------------------
G = "Testing"
_add("faults", str, None, "Fault injection for tests: comma-separated `point[=action]`. Off by default. "
     "See docs/failure-semantics.md.", G, nullable=True)

SETTINGS: dict[str, Setting] = {s.name: s for s in _S}
del G

#: Setting names handed to kafka-python unchanged.
KAFKA_PASSTHROUGH = (
    "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
    "ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_password",
)


class Settings:
    """Resolved settings: attribute access, immutable after creation."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None,
                 **kwargs: Any) -> None:
        given = dict(values or {})
        given.update(kwargs)
        unknown = sorted(set(given) - set(SETTINGS))
        if unknown:
            raise ConfigurationError(
                f"unknown setting {unknown[0]!r}" + (f" (and {unknown[1:]})" if len(unknown) > 1 else "")
                + "; see docs/configuration.md for the list"
            )
        env = os.environ if environ is None else environ
        resolved: dict[str, Any] = {}
        for name, setting in SETTINGS.items():
            if name in given:
                resolved[name] = setting.coerce(given[name], "argument")
            elif setting.env_var in env:
                resolved[name] = setting.coerce(env[setting.env_var], f"environment {setting.env_var}")
            else:
                default = setting.default
                resolved[name] = default.copy() if isinstance(default, (dict, list)) else default
        from .kafka.clients import check_kafka_options  # kafka-python is imported by ktasks.kafka only

        check_kafka_options(resolved["kafka_options"])
        resolved["topic_configs"] = _check_topic_configs(resolved["topic_configs"], resolved["min_insync_replicas"],
                                                         resolved["replication_factor"])
        object.__setattr__(self, "_values", resolved)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("Settings are immutable; use replace()")

    def replace(self, **changes: Any) -> Settings:
        """A copy with some settings changed (validated like the originals)."""
        values = dict(self._values)
        values.update(changes)
        return Settings(values, environ={})

    def as_dict(self) -> dict[str, Any]:
        return dict(self._values)

    def kafka_common(self) -> dict[str, Any]:
        """Servers, security, then ``kafka_options``; :func:`ktasks.kafka.client_config` keeps what a client accepts."""
        cfg: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers.split(",")}
        for name in KAFKA_PASSTHROUGH:
            value = self._values[name]
            if value is not None:
                cfg[name] = value
        cfg.update(self.kafka_options)
        return cfg

    def topic_config(self) -> dict[str, str]:
        """Kafka configs of every topic ktasks creates: ``topic_configs`` plus ``min.insync.replicas``."""
        configs = dict(self.topic_configs)
        if self.min_insync_replicas is not None:
            configs["min.insync.replicas"] = str(self.min_insync_replicas)
        return configs

    def __repr__(self) -> str:
        shown = {k: ("***" if "password" in k and v else v) for k, v in self._values.items()
                 if v != SETTINGS[k].default}
        return f"Settings({shown})"


def _check_topic_configs(configs: dict[str, Any], min_insync: int | None, replication_factor: int
                         ) -> dict[str, str]:
    """``topic_configs`` with every value a string; errors name the offending key."""
    checked: dict[str, str] = {}
    for key, value in configs.items():
        if not isinstance(key, str) or not key or key != key.strip():
            raise ConfigurationError(f"topic_configs: {key!r} is not a Kafka config name")
        if key == "min.insync.replicas":
            raise ConfigurationError("topic_configs: set 'min.insync.replicas' with the min_insync_replicas "
                                     "setting instead")
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ConfigurationError(f"topic_configs: value of {key!r} must be a string or an int, "
                                     f"got {type(value).__name__} {value!r}")
        checked[key] = str(value)
    if min_insync is not None and not 1 <= min_insync <= replication_factor:
        raise ConfigurationError(f"min_insync_replicas={min_insync} must be between 1 and replication_factor="
                                 f"{replication_factor}: with acks=all no write could ever succeed")
    return checked
