"""TopicManager: creation with the configured partitions, and reports on existing topics."""

from __future__ import annotations

import logging
import re

import pytest

from ktasks import TopicError
from ktasks.settings import Settings
from ktasks.topics import TopicManager
from tests.helpers import create_topic


@pytest.fixture
def manager(kafka_bootstrap):
    m = TopicManager(Settings(bootstrap_servers=kafka_bootstrap, partitions=3), "ktasks-test-topics")
    yield m
    m.close()


def _partitions(admin, topic):
    [d] = admin.describe_topics([topic])
    return len(d["partitions"])


def test_ensure_creates_missing_topics(manager, kafka_admin, unique):
    a, b = unique("a"), unique("b")
    assert manager.partitions_of(a) is None
    reports = manager.ensure([a, b, a])
    assert [(r.name, r.partitions, r.created, r.short) for r in reports] == [(a, 3, True, False), (b, 3, True, False)]
    assert _partitions(kafka_admin, a) == _partitions(kafka_admin, b) == 3
    again = manager.ensure([a])
    assert [(r.name, r.created) for r in again] == [(a, False)]


def test_partitions_argument_wins(manager, kafka_admin, unique):
    topic = unique("five")
    [report] = manager.ensure([topic], partitions=5, replication_factor=1)
    assert report.partitions == 5 and report.wanted_partitions == 5
    assert _partitions(kafka_admin, topic) == 5


def test_existing_topic_with_fewer_partitions_is_reported_never_changed(manager, kafka_admin, unique, caplog):
    topic = unique("small")
    create_topic(kafka_admin, topic, partitions=2)
    with caplog.at_level(logging.WARNING, logger="ktasks.topics"):
        [report] = manager.ensure([topic], partitions=6)
    assert (report.created, report.partitions, report.wanted_partitions, report.short) == (False, 2, 6, True)
    assert "has 2 partitions, fewer than the configured 6; not changing it" in caplog.text
    assert _partitions(kafka_admin, topic) == 2


def test_more_partitions_than_configured_is_fine(manager, kafka_admin, unique, caplog):
    topic = unique("big")
    create_topic(kafka_admin, topic, partitions=4)
    with caplog.at_level(logging.WARNING, logger="ktasks.topics"):
        [report] = manager.ensure([topic], partitions=2)
    # Only ktasks' own lines: kafka-python's selector warns of a slow step on a loaded machine.
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("ktasks")]
    assert not report.short and not report.created and ours == []


def test_creation_errors_carry_the_brokers_reason(manager, unique):
    with pytest.raises(TopicError, match="replication factor 3.*[Rr]eplication factor"):
        manager.ensure([unique("rf")], replication_factor=3)  # a single-broker cluster
    with pytest.raises(TopicError, match="invalid|Invalid|illegal|Illegal"):
        manager.ensure(["bad topic name!"])


# -- topic configs (topic_configs, min_insync_replicas) -------------------------------------------


def _config(admin, topic, key):
    from kafka.admin import ConfigResource, ConfigResourceType

    found = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic, {key: None})],
                                   config_filter="all")
    return found["topic"][topic][key]["value"]


def test_created_topics_get_the_configured_topic_configs(kafka_bootstrap, kafka_admin, unique):
    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=2, min_insync_replicas=1,
                        topic_configs={"retention.ms": 3600000, "cleanup.policy": "delete"})
    manager = TopicManager(settings, "ktasks-test-topic-configs")
    try:
        topic = unique("configured")
        manager.ensure([topic])
        assert _config(kafka_admin, topic, "retention.ms") == "3600000"
        assert _config(kafka_admin, topic, "min.insync.replicas") == "1"
        [check] = manager.check([topic])
        assert check.problems == [] and (check.partitions, check.replication_factor) == (2, 1)
    finally:
        manager.close()


def test_check_names_every_difference(kafka_bootstrap, kafka_admin, unique):
    settings = Settings(bootstrap_servers=kafka_bootstrap, partitions=4, topic_configs={"retention.ms": "60000"})
    manager = TopicManager(settings, "ktasks-test-topic-check")
    try:
        short, missing = unique("short"), unique("missing")
        create_topic(kafka_admin, short, partitions=2, configs={"retention.ms": "120000"})
        by_name = {c.name: c for c in manager.check([short, missing])}
        assert by_name[missing].problems == ["missing"]
        assert by_name[short].problems == ["2 partitions, fewer than the configured 4",
                                           "retention.ms=120000, configured 60000"]
        wants_rf3 = TopicManager(settings.replace(replication_factor=3), "ktasks-test-topic-check-rf")
        try:
            [rf_check] = wants_rf3.check([short], {short: 2})
        finally:
            wants_rf3.close()
        assert rf_check.problems == ["replication factor 1, below the configured 3",
                                     "retention.ms=120000, configured 60000"]
    finally:
        manager.close()


@pytest.mark.parametrize(("settings", "fragment"), [
    ({"min_insync_replicas": 2}, "min_insync_replicas=2 must be between 1 and replication_factor=1"),
    ({"min_insync_replicas": 0, "replication_factor": 3}, "min_insync_replicas=0 must be between 1"),
    ({"topic_configs": {"min.insync.replicas": "2"}}, "with the min_insync_replicas setting instead"),
    ({"topic_configs": {"retention.ms": 1.5}}, "value of 'retention.ms' must be a string or an int, got float"),
    ({"topic_configs": {"": "x"}}, "'' is not a Kafka config name"),
])
def test_topic_settings_are_checked(settings, fragment):
    from ktasks.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match=re.escape(fragment)):
        Settings(**settings)


def test_topic_config_merges_min_insync_replicas():
    settings = Settings(replication_factor=3, min_insync_replicas=2, topic_configs={"retention.ms": 60000})
    assert settings.topic_config() == {"retention.ms": "60000", "min.insync.replicas": "2"}
    assert Settings().topic_config() == {}
