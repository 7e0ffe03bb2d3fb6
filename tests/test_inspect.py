"""``ktasks.inspect`` against the real broker: lag, owners and dead-letter sizes while a worker drains a backlog."""

from __future__ import annotations

import socket
from typing import Any

from kafka import TopicPartition
from kafka.admin import OffsetSpec

from ktasks.inspect import GroupReport, Inspector, cluster_status, inspect_app, render_report
from ktasks.settings import Settings
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

SLOW = """
import time

@app.task
def slow(n):
    time.sleep(0.05)
    effect("ran", n=n)

@app.task(max_retries=1, retry_backoff_s=0.1)
def broken(n):
    raise ValueError(f"broken {n}")
"""

BACKLOG = 160


def admin_committed(admin: Any, group: str, topic: str) -> dict[int, int]:
    offsets = admin.list_group_offsets({group: None}).get(group, {})
    return {tp.partition: om.offset for tp, om in offsets.items() if tp.topic == topic}


def admin_ends(admin: Any, topic: str, partitions: int) -> dict[int, int]:
    result = admin.list_partition_offsets({TopicPartition(topic, p): OffsetSpec.LATEST for p in range(partitions)})
    return {tp.partition: om.offset for tp, om in result.items()}


def test_lag_matches_the_admin_api_while_a_backlog_drains(project: Any, kafka_admin: Any) -> None:
    p = project(SLOW, partitions=2)
    for n in range(BACKLOG):
        p.app_module.slow.apply_async(args=(n,), key=f"k{n}")
    p.app.flush()
    ends = admin_ends(kafka_admin, p.topic, 2)
    assert sum(ends.values()) == BACKLOG

    # No worker yet: nothing committed, so the lag is everything (end - earliest), and nobody owns anything.
    before = inspect_app(p.app)
    assert before.lag == BACKLOG
    for part in before.task_topics[0].partitions:
        assert part.committed is None and part.owner is None
        assert part.lag == part.end - part.earliest == ends[part.partition]

    w = p.worker("-c", "2")
    expected_client = f"ktasks-{p.app.name}@{socket.gethostname()}:{w.pid}"
    seen: list[int] = []

    def check_once() -> GroupReport:
        low = admin_committed(kafka_admin, p.group, p.topic)
        report = inspect_app(p.app)
        high = admin_committed(kafka_admin, p.group, p.topic)
        (topic,) = report.task_topics
        assert topic.topic == p.topic and topic.exists
        for part in topic.partitions:
            # The end offset is fixed (everything was enqueued first); the committed offset only grows,
            # so what inspect read lies between what the admin API said just before and just after.
            assert part.end == ends[part.partition]
            if part.committed is None:
                assert part.partition not in low
                assert part.lag == part.end - part.earliest
            else:
                assert low.get(part.partition, -1) <= part.committed <= high[part.partition]
                assert part.lag == part.end - part.committed
        assert report.lag == sum(part.lag for part in topic.partitions)
        seen.append(report.lag)
        return report

    final = wait_until(lambda: (r := check_once()).lag == 0 and r, 120, interval_s=0.1,
                       message="the backlog never drained to lag 0")
    assert any(0 < lag < BACKLOG for lag in seen), f"no report caught the backlog mid-drain: {seen}"
    assert seen == sorted(seen, reverse=True), "lag only goes down while one worker drains"
    assert len(wait_effects(p, "ran", BACKLOG)) == BACKLOG
    assert admin_committed(kafka_admin, p.group, p.topic) == ends

    # The owner is the worker's consumer, named by its client id and host.
    assert final.state == "Stable"
    owners = {part.owner.client_id for part in final.task_topics[0].partitions if part.owner}
    assert owners == {expected_client}
    assert all(part.owner and part.owner.host for part in final.task_topics[0].partitions)
    (member,) = final.members
    assert member.owner.client_id == expected_client
    assert {(p.topic, 0), (p.topic, 1)} <= set(member.partitions)
    text = render_report(final)
    assert expected_client in text and "lag 0" in text
    assert w.stop() == 0


def test_retry_topics_and_dead_letter_sizes(project: Any, kafka_admin: Any) -> None:
    p = project(SLOW, partitions=2)
    w = p.worker("-c", "2")
    w.wait_assigned()
    for n in range(3):
        p.app_module.broken.delay(n)
    p.app.flush()
    dlt = p.app.dead_letter_topic(p.topic)

    def dead_lettered() -> GroupReport | None:
        report = inspect_app(p.app)
        (d,) = report.dead_letters
        return report if d.topic == dlt and d.size == 3 and report.lag == 0 and report.retry_lag == 0 else None

    report = wait_until(dead_lettered, 90, interval_s=0.2, message="3 dead letters and no lag")
    # Each failed once, went through a retry topic, failed again and was dead-lettered.
    retried = {t.topic: t.end for t in report.retry_topics if t.end}
    assert sum(retried.values()) == 3, retried
    assert all(t.kind == "retry" for t in report.retry_topics)
    assert {t.topic for t in report.retry_topics} == set(p.app.retry_topics(p.topic))
    text = render_report(report)
    assert f"{dlt}  3 record(s)" in text
    assert w.stop() == 0


def test_cluster_status_reachable_and_unreachable(kafka_bootstrap: str, closed_port: int,
                                                 make_app: Any) -> None:
    app = make_app(partitions=2)
    app.ensure_topics([app.default_topic])
    status = cluster_status(app.settings, [app.default_topic, app.dead_letter_topic(app.default_topic)])
    assert status.reachable and status.error is None
    assert status.cluster_id and len(status.brokers) >= 1
    by_name = {t.name: t for t in status.topics}
    assert by_name[app.default_topic].partitions == 2
    assert by_name[app.dead_letter_topic(app.default_topic)].partitions is None

    down = cluster_status(Settings(bootstrap_servers=f"127.0.0.1:{closed_port}"), timeout_s=1.0)
    assert not down.reachable
    assert f"127.0.0.1:{closed_port}" in (down.error or "")


def test_an_inspector_reports_groups_that_never_committed(kafka_bootstrap: str, make_app: Any,
                                                         unique: Any) -> None:
    app = make_app(partitions=3)
    for i in range(5):
        app.send_task("nobody.runs.this", args=(i,))
    app.flush()
    with Inspector(app.settings, timeout_s=5.0) as ins:
        report = ins.group_report(unique("nobody"), [app.default_topic], {}, [])
    assert report.state == "no such group" and not report.members
    assert report.lag == 5
    assert [p.committed for p in report.task_topics[0].partitions] == [None, None, None]
