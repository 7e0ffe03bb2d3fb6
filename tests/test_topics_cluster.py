"""TopicManager.ensure on the three-node cluster: concurrent creators never see "could not be created"."""

from __future__ import annotations

import threading

from ktasks.dev.cluster import DevCluster
from ktasks.settings import Settings
from ktasks.topics import TopicManager
from tests.helpers import UniqueNames

ROUNDS = 4
TOPICS_PER_ROUND = 8


def test_concurrent_ensure_of_the_same_topics_waits_for_them(kafka_cluster: DevCluster, unique: UniqueNames
                                                              ) -> None:
    # Each creator bootstraps from a different broker, as workers on separate hosts do; all
    # ask for the same new topics at once. The losers of the race get TopicAlreadyExists, or
    # describe the topic on a broker whose metadata has not caught up yet: before the fix,
    # ensure() then raised "topic ... could not be created".
    managers = [TopicManager(Settings(bootstrap_servers=f"127.0.0.1:{kafka_cluster.port + i}", partitions=3,
                                      replication_factor=3), f"race-{i}")
                for i in range(3) for _ in range(2)]
    errors: list[BaseException] = []
    try:
        for r in range(ROUNDS):
            topics = [unique(f"race{r}x{i}") for i in range(TOPICS_PER_ROUND)]
            barrier = threading.Barrier(len(managers))

            def create(m: TopicManager, topics: list[str] = topics,
                       barrier: threading.Barrier = barrier) -> None:
                barrier.wait()
                try:
                    reports = m.ensure(topics)
                    assert [rep.partitions for rep in reports] == [3] * len(topics)
                except BaseException as exc:     # noqa: BLE001 - collected and reported below
                    errors.append(exc)

            threads = [threading.Thread(target=create, args=(m,)) for m in managers]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
        assert not errors, f"{len(errors)} failed ensure() calls, first: {errors[0]!r}"
    finally:
        for m in managers:
            m.close()
