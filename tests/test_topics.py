"""TopicManager: creation with the configured partitions, and reports on existing topics."""

from __future__ import annotations

import logging

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
    assert not report.short and not report.created and caplog.text == ""


def test_creation_errors_carry_the_brokers_reason(manager, unique):
    with pytest.raises(TopicError, match="replication factor 3.*[Rr]eplication factor"):
        manager.ensure([unique("rf")], replication_factor=3)  # a single-broker cluster
    with pytest.raises(TopicError, match="invalid|Invalid|illegal|Illegal"):
        manager.ensure(["bad topic name!"])
