"""The balanced assignor's algorithm, without a broker: balance per topic, stickiness, joins and leaves."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest
from kafka import TopicPartition
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

from ktasks.kafka.assignor import BalancedAssignor, Member, Plan, UpgradeCompatibleCooperativeSticky, plan

TASKS = {"tasks": 6, "tasks.retry-1s": 6, "tasks.retry-10s": 6, "tasks.retry-60s": 6}


def per_topic(p: Plan, member: str) -> Counter[str]:
    return Counter(tp.topic for tp in p.target[member])


def assert_balanced(partitions: dict[str, int], members: dict[str, Member], p: Plan) -> None:
    every = [tp for tps in p.target.values() for tp in tps]
    assert len(every) == len(set(every)), "a partition given twice"
    for topic, count in partitions.items():
        subscribers = [m for m, meta in members.items() if topic in meta.topics]
        if not subscribers:
            continue
        assert {tp for tp in every if tp.topic == topic} == {TopicPartition(topic, i) for i in range(count)}
        floor, ceil = count // len(subscribers), -(-count // len(subscribers))
        for m in members:
            got = per_topic(p, m)[topic]
            if m in subscribers:
                assert floor <= got <= ceil, (topic, m, got)
            else:
                assert got == 0, (topic, m, got)


def settle(partitions: dict[str, int], topics: dict[str, frozenset[str]],
           owned: dict[str, set[TopicPartition]], generation: int = 1) -> tuple[Plan, int, dict[str, set]]:
    """Run cooperative rounds as the group would until nothing waits; returns the last plan and rounds."""
    for rounds in range(1, 5):
        members = {m: Member(topics[m], frozenset(owned.get(m, ())), generation) for m in topics}
        p = plan(partitions, members)
        # Each member now holds what this round gives it; what it lost it revoked.
        owned = {m: set(p.now[m]) for m in topics}
        # A partition is never held by two members at once, in any round.
        held = [tp for tps in owned.values() for tp in tps]
        assert len(held) == len(set(held))
        if p.complete:
            return p, rounds, owned
        generation += 1
    raise AssertionError("did not settle in 4 rounds")


def test_every_topic_balanced_on_its_own() -> None:
    topics = frozenset(TASKS)
    members = {m: Member(topics) for m in ("a", "b", "c", "d")}
    p = plan(TASKS, members)
    assert_balanced(TASKS, members, p)
    # Four members, six task partitions: nobody is left with only retry partitions.
    assert all(per_topic(p, m)["tasks"] >= 1 for m in members)
    assert p.complete  # nobody owned anything: nothing waits for a second round


def test_single_partition_tiers_spread_over_members() -> None:
    partitions = {"tasks": 2} | {f"tasks.retry-{i}": 1 for i in range(10)}
    members = {m: Member(frozenset(partitions)) for m in ("a", "b")}
    p = plan(partitions, members)
    assert_balanced(partitions, members, p)
    assert per_topic(p, "a")["tasks"] == per_topic(p, "b")["tasks"] == 1
    assert abs(len(p.target["a"]) - len(p.target["b"])) <= 1
    # The same when b joins a that owns everything: stickiness alone would leave a every tier.
    everything = frozenset(TopicPartition(t, i) for t, n in partitions.items() for i in range(n))
    joined = plan(partitions, {"a": Member(frozenset(partitions), everything, 1), "b": Member(frozenset(partitions))})
    assert_balanced(partitions, members, joined)
    assert abs(len(joined.target["a"]) - len(joined.target["b"])) <= 1


@pytest.mark.parametrize("seed", range(40))
def test_random_groups_balanced_and_stable(seed: int) -> None:
    rnd = random.Random(seed)
    partitions = {f"t{i}": rnd.randint(1, 13) for i in range(rnd.randint(1, 6))}
    names = [f"m{i}" for i in range(rnd.randint(1, 7))]
    topics = {m: frozenset(t for t in partitions if rnd.random() < 0.8) or frozenset(partitions) for m in names}
    # Random (valid, non-overlapping) current ownership.
    owned: dict[str, set[TopicPartition]] = {m: set() for m in names}
    for t, count in partitions.items():
        for i in range(count):
            holders = [m for m in names if t in topics[m]]
            if holders and rnd.random() < 0.6:
                owned[rnd.choice(holders)].add(TopicPartition(t, i))
    p, rounds, owned = settle(partitions, topics, owned)
    assert rounds <= 2
    assert_balanced(partitions, {m: Member(topics[m]) for m in names}, p)
    if len({topics[m] for m in names}) == 1:
        totals = [len(p.target[m]) for m in names]
        assert max(totals) - min(totals) <= 1
    # Sticky: a rebalance with nothing changed moves nothing.
    again = plan(partitions, {m: Member(topics[m], frozenset(owned[m]), 9) for m in names})
    assert again.target == p.target and again.complete


def test_join_moves_only_the_new_members_share() -> None:
    topics = frozenset(TASKS)
    first, _, owned = settle(TASKS, {"a": topics}, {})
    assert first.target["a"] == {TopicPartition(t, i) for t, n in TASKS.items() for i in range(n)}
    members = {"a": Member(topics, frozenset(owned["a"]), 1), "b": Member(topics)}
    p = plan(TASKS, members)
    # Round one: a keeps what stays, b gets nothing a still holds; nothing of a's is reassigned.
    assert p.now["a"] == p.target["a"] < owned["a"]
    assert p.now["b"] == set()
    final, rounds, _ = settle(TASKS, {"a": topics, "b": topics}, owned)
    assert rounds == 2
    assert final.target["a"] <= owned["a"]  # a only gave partitions away
    assert all(per_topic(final, m)[t] == 3 for m in "ab" for t in TASKS)


def test_three_members_join_one_after_another() -> None:
    topics = frozenset({"tasks"})
    owned: dict[str, set[TopicPartition]] = {}
    group: dict[str, frozenset[str]] = {}
    for m in ("a", "b", "c"):
        group[m] = topics
        before = {k: set(v) for k, v in owned.items()}
        p, _, owned = settle({"tasks": 6}, group, owned)
        for k, tps in before.items():
            assert p.target[k] <= tps, "an existing member received a partition another gave up"
    assert all(len(owned[m]) == 2 for m in "abc")


def test_leave_moves_only_the_leavers_partitions() -> None:
    topics = frozenset(TASKS)
    group = {m: topics for m in "abc"}
    _, _, owned = settle(TASKS, group, {})
    del group["c"]
    gone = owned.pop("c")
    p, rounds, after = settle(TASKS, group, owned)
    assert rounds == 1  # the leaver's partitions are unowned: given at once
    for m in "ab":
        assert owned[m] <= after[m]
    assert set().union(*(after[m] - owned[m] for m in "ab")) == gone
    assert_balanced(TASKS, {m: Member(topics) for m in "ab"}, p)


def test_members_with_different_topic_sets() -> None:
    partitions = {"emails": 4, "reports": 3, "shared": 5}
    topics = {"a": frozenset({"emails", "shared"}), "b": frozenset({"reports", "shared"}),
              "c": frozenset({"emails", "reports", "shared"})}
    p, _, _ = settle(partitions, topics, {})
    assert_balanced(partitions, {m: Member(t) for m, t in topics.items()}, p)
    assert not any(tp.topic == "reports" for tp in p.target["a"])
    assert not any(tp.topic == "emails" for tp in p.target["b"])


def test_newest_generation_wins_a_double_claim() -> None:
    tp = TopicPartition("tasks", 0)
    members = {"a": Member(frozenset({"tasks"}), frozenset({tp}), 3),
               "b": Member(frozenset({"tasks"}), frozenset({tp}), 5)}
    p = plan({"tasks": 1}, members)
    assert p.target["b"] == {tp} and p.target["a"] == set()
    # Neither gets it this round: a must release it first.
    assert p.now == {"a": set(), "b": set()}


def test_claims_on_unsubscribed_or_missing_partitions_are_void() -> None:
    members = {"a": Member(frozenset({"tasks"}), frozenset({TopicPartition("old", 0), TopicPartition("tasks", 7)})),
               "b": Member(frozenset({"tasks"}))}
    p = plan({"tasks": 2}, members)
    assert len(p.target["a"]) == len(p.target["b"]) == 1
    assert p.complete


def _member(member_id: str, sub: ConsumerProtocolSubscription) -> SimpleNamespace:
    # The coordinator hands the assignor decoded subscriptions, as received in the JoinGroup.
    return SimpleNamespace(member_id=member_id, metadata=ConsumerProtocolSubscription.decode(sub.encode()))


def test_kafka_plugin_round_trip() -> None:
    cluster = SimpleNamespace(partitions_for_topic=lambda t: set(range(4)) if t == "tasks" else None)
    a, b = BalancedAssignor(), BalancedAssignor()
    first = a.assign(cluster, [_member("a", a.metadata({"tasks"}))])
    assert first["a"].partitions() == [TopicPartition("tasks", i) for i in range(4)]
    a.on_assignment(ConsumerProtocolAssignment.decode(first["a"].encode()), 1)
    sub = a.metadata({"tasks"})
    assert sub.generation_id == 1 and sub.owned_partitions[0].partitions == [0, 1, 2, 3]
    second = a.assign(cluster, [_member("a", sub), _member("b", b.metadata({"tasks"}))])
    assert len(second["a"].partitions()) == 2 and second["b"].partitions() == []
    # A bound consumer's live assignment wins over the last assignment received.
    a.bind(lambda: [TopicPartition("tasks", 0)])
    assert a.metadata({"tasks"}).owned_partitions[0].partitions == [0]


def test_cooperative_sticky_offered_second_claims_what_the_consumer_owns() -> None:
    old = UpgradeCompatibleCooperativeSticky()
    assert old.name == "cooperative-sticky"
    old.bind(lambda: [TopicPartition("tasks", 3)])
    sub = ConsumerProtocolSubscription.decode(old.metadata({"tasks"}).encode())
    assert [(t.topic, t.partitions) for t in sub.owned_partitions] == [("tasks", [3])]
