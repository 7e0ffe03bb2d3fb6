"""Creating and checking topics.

Topics are created on first use (or ahead of time with ``ktasks topics
create``) with the configured partitions, replication factor and topic configs
(``topic_configs``, ``min_insync_replicas``). An existing topic with fewer
partitions than configured is reported, never changed: adding partitions moves
keys to other partitions and breaks per-key order. :meth:`TopicManager.check`
(``ktasks topics check``) compares existing topics with the settings.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .errors import TopicError
from .kafka import ConfigResource, ConfigResourceType, KafkaAdminClient, client_config
from .kafka.clients import connecting
from .kafka.errors import (
    KafkaError,
    TopicAlreadyExistsError,
)
from .settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["TopicCheck", "TopicManager", "TopicReport"]

_managers: weakref.WeakSet[TopicManager] = weakref.WeakSet()
# Admin clients inherited across a fork, kept referenced so the child never closes them.
_inherited: list[Any] = []
# CreateTopics error codes that mean "nothing to do".
_TOPIC_ALREADY_EXISTS = 36


@dataclass(frozen=True)
class TopicReport:
    """What ``ensure`` found or did for one topic."""

    name: str
    partitions: int
    created: bool
    wanted_partitions: int

    @property
    def short(self) -> bool:
        return self.partitions < self.wanted_partitions


@dataclass(frozen=True)
class TopicCheck:
    """How one existing topic compares with the settings (``ktasks topics check``)."""

    name: str
    exists: bool
    partitions: int = 0
    wanted_partitions: int = 0
    replication_factor: int = 0
    wanted_replication_factor: int = 0
    config_diffs: tuple[tuple[str, str | None, str], ...] = ()
    """``(key, value on the broker or None, configured value)`` for each config that differs."""

    @property
    def problems(self) -> list[str]:
        """What is wrong, one phrase each; empty when the topic matches the settings."""
        if not self.exists:
            return ["missing"]
        found = []
        if self.partitions < self.wanted_partitions:
            found.append(f"{self.partitions} partitions, fewer than the configured {self.wanted_partitions}")
        if self.replication_factor < self.wanted_replication_factor:
            found.append(f"replication factor {self.replication_factor}, below the configured "
                         f"{self.wanted_replication_factor}")
        for key, have, want in self.config_diffs:
            found.append(f"{key}={have if have is not None else '(unset)'}, configured {want}")
        return found


class TopicManager:
    """Owns a lazily built admin client (rebuilt after fork) and a cache of checked topics."""

    def __init__(self, settings: Settings, client_id: str) -> None:
        self._settings = settings
        self._client_id = client_id
        self._admin: KafkaAdminClient | None = None
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._known: dict[str, int] = {}
        _managers.add(self)

    def _after_fork(self) -> None:
        """In a forked child: leave the parent's admin client alone, start afresh."""
        if self._pid == os.getpid():
            return
        if self._admin is not None:
            _inherited.append(self._admin)
        self._admin, self._known, self._pid = None, {}, os.getpid()
        self._lock = threading.Lock()

    def admin(self) -> KafkaAdminClient:
        """This process's admin client, built on first use."""
        self._after_fork()
        with self._lock:
            if self._admin is None:
                cfg = client_config(self._settings, "admin", dict(
                    client_id=f"{self._client_id}-admin", bootstrap_timeout_ms=self._settings.send_timeout_ms,
                    request_timeout_ms=max(self._settings.send_timeout_ms, 5000)), user_wins=False)
                with connecting(self._settings):
                    self._admin = KafkaAdminClient(**cfg)
            return self._admin

    def partitions_of(self, topic: str) -> int | None:
        """Partition count of an existing topic, or None if it does not exist."""
        if topic in self._known:
            return self._known[topic]
        try:
            described = self.admin().describe_topics([topic])
        except KafkaError:
            return None
        for entry in described:
            if entry.get("topic", entry.get("name")) == topic and not entry.get("error_code"):
                count = len(entry.get("partitions") or [])
                if count:
                    self._known[topic] = count
                    return count
        return None

    def forget(self, topics: Iterable[str]) -> None:
        """Drop cached partition counts (the topics may have been deleted since)."""
        for topic in topics:
            self._known.pop(topic, None)

    def ensure(self, topics: Iterable[str], partitions: int | None = None,
               replication_factor: int | None = None, configs: dict[str, str] | None = None
               ) -> list[TopicReport]:
        """Create missing topics; report existing ones with fewer partitions than wanted.

        Created topics get the settings' topic configs (``topic_configs`` and
        ``min_insync_replicas``), then ``configs`` on top.
        """
        wanted = partitions or self._settings.partitions
        rf = replication_factor or self._settings.replication_factor
        configs = {**self._settings.topic_config(), **(configs or {})}
        reports: list[TopicReport] = []
        missing: list[str] = []
        for topic in dict.fromkeys(topics):
            have = self.partitions_of(topic)
            if have is None:
                missing.append(topic)
            else:
                reports.append(self._report(topic, have, False, wanted))
        if missing:
            spec: dict[str, dict[str, Any]] = {
                t: {"num_partitions": wanted, "replication_factor": rf, "configs": dict(configs)}
                for t in missing
            }
            admin = self.admin()
            try:
                result = admin.create_topics(spec, raise_errors=False,
                                             timeout_ms=self._settings.send_timeout_ms)
            except TopicAlreadyExistsError:
                result = {}
            except KafkaError as exc:
                raise TopicError(f"creating topics {missing}: {exc}") from exc
            for entry in result.get("topics", ()):
                code = entry.get("error_code") or 0
                if code and code != _TOPIC_ALREADY_EXISTS:
                    raise TopicError(
                        f"creating topic {entry.get('name')!r} ({wanted} partitions, replication factor "
                        f"{rf}): {entry.get('error_message') or 'error code ' + str(code)}")
            wait_s = max(self._settings.send_timeout_ms, 10000) / 1000.0
            deadline = time.monotonic() + wait_s
            try:
                admin.wait_for_topics(missing, timeout_ms=wait_s * 1000)
            except KafkaError as exc:
                raise TopicError(f"topics {missing} created but not ready after {wait_s:.0f}s: {exc}") from exc
            for topic in missing:
                have = self._wait_for(topic, deadline)
                if have is None:
                    raise TopicError(f"topic {topic!r} was created (or is being created by another process) but "
                                     f"no broker described it within {wait_s:.0f}s")
                logger.info("created topic %s (%d partitions, replication factor %d)", topic, have, rf)
                reports.append(self._report(topic, have, True, wanted))
        return reports

    def _wait_for(self, topic: str, deadline: float) -> int | None:
        """Partition count of ``topic`` once a broker describes it; None if none did by ``deadline``.

        After CreateTopics (ours, or another process's that won the race and left us
        TopicAlreadyExists) the topic reaches each broker's metadata cache a little later:
        on a loaded cluster a describe sent to another broker still says it does not exist.
        """
        pause = 0.05
        while True:
            self._known.pop(topic, None)
            have = self.partitions_of(topic)
            if have is not None or time.monotonic() >= deadline:
                return have
            time.sleep(min(pause, max(0.0, deadline - time.monotonic())))
            pause = min(pause * 2, 0.5)

    def _report(self, topic: str, have: int, created: bool, wanted: int) -> TopicReport:
        report = TopicReport(topic, have, created, wanted)
        if report.short:
            logger.warning(
                "topic %s has %d partitions, fewer than the configured %d; not changing it "
                "(adding partitions would move keys and break per-key order)", topic, have, wanted)
        return report

    def check(self, topics: Iterable[str], partitions: dict[str, int] | None = None,
              configs: dict[str, dict[str, str]] | None = None) -> list[TopicCheck]:
        """Compare existing topics with the settings: partitions, replication factor and topic configs.

        Args:
            topics: names to check.
            partitions: wanted partition count per topic (default: the ``partitions`` setting).
            configs: topic configs wanted per topic besides the settings' (a changelog's
                ``cleanup.policy``).

        Raises:
            TopicError: the broker could not be asked.
        """
        names = list(dict.fromkeys(topics))
        base = self._settings.topic_config()
        wanted_of = {n: {**base, **(configs or {}).get(n, {})} for n in names}
        try:
            described = {e.get("topic", e.get("name")): e for e in self.admin().describe_topics(names)}
            existing = [n for n in names if _partition_list(described.get(n))]
            found: dict[str, Any] = {}
            if any(wanted_of[n] for n in existing):
                resources = [ConfigResource(ConfigResourceType.TOPIC, n, dict.fromkeys(wanted_of[n]))
                             for n in existing if wanted_of[n]]
                found = self.admin().describe_configs(resources, config_filter="all").get("topic", {})
        except KafkaError as exc:
            raise TopicError(f"describing topics {names}: {exc}") from exc
        checks = []
        for name in names:
            parts = _partition_list(described.get(name))
            wanted = (partitions or {}).get(name) or self._settings.partitions
            if not parts:
                checks.append(TopicCheck(name, exists=False, wanted_partitions=wanted))
                continue
            have = found.get(name, {})
            diffs = []
            for key, want in wanted_of[name].items():
                value = have.get(key, {}).get("value") if isinstance(have.get(key), dict) else None
                if value != want:
                    diffs.append((key, value, want))
            rf = min(len(p.get("replica_nodes") or ()) for p in parts)
            checks.append(TopicCheck(name, True, len(parts), wanted, rf, self._settings.replication_factor,
                                     tuple(diffs)))
        return checks

    def close(self) -> None:
        """Close this process's admin client (a no-op if none was built here)."""
        self._after_fork()
        with self._lock:
            if self._admin is not None:
                self._admin.close()
            self._admin = None


def _partition_list(entry: dict[str, Any] | None) -> list[dict[str, Any]]:
    if not entry or entry.get("error_code"):
        return []
    return list(entry.get("partitions") or [])


def _reset_after_fork() -> None:
    for manager in list(_managers):
        manager._after_fork()


os.register_at_fork(after_in_child=_reset_after_fork)
