"""The ``balanced`` partition assignor: per topic balanced, sticky and cooperative.

Why not kafka-python's sticky assignors: they balance the *count* of
partitions a member owns over all its topics together. A ktasks worker
subscribes to its task topics and to every retry tier, so a member can end
up with only retry-tier partitions while another owns every task partition.
Here each topic is balanced on its own: with N members subscribed to a topic
of P partitions, each owns ``P // N`` or ``P // N + 1`` of it. Which members
get the ``+ 1`` of each topic is then chosen so the members' totals differ
by at most one where the subscriptions allow it.

Sticky: a member keeps the partitions it owns up to its share, so a
rebalance moves only what must move to restore the balance.

Cooperative (KIP-429, ``RebalanceProtocol.COOPERATIVE``): members keep
their partitions across a JoinGroup; a partition that moves is left out of
the first round's assignment (its owner revokes it, commits, and rejoins,
which kafka-python does on its own when its assignment shrinks), and is
given to its new owner in the follow-up round. Partitions that do not move
keep running throughout.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition
from kafka.coordinator.assignors.abstract import AbstractPartitionAssignor, RebalanceProtocol
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.protocol.consumer.metadata import ConsumerProtocolAssignment, ConsumerProtocolSubscription

logger = logging.getLogger(__name__)

__all__ = ["Member", "Plan", "plan", "BalancedAssignor", "UpgradeCompatibleCooperativeSticky"]

# Version 2 of the subscription carries OwnedPartitions (v1+) and GenerationId (v2+): the
# leader trusts the newest claim when a member that missed a generation still claims a
# partition that moved on without it.
_SUBSCRIPTION_VERSION = 2


@dataclass(frozen=True)
class Member:
    """One group member as the leader sees it in a JoinGroup."""

    topics: frozenset[str]
    owned: frozenset[TopicPartition] = frozenset()
    generation: int = -1


@dataclass
class Plan:
    """The target assignment and what may be handed out in this round."""

    target: dict[str, set[TopicPartition]] = field(default_factory=dict)
    """Where every partition should end up."""
    now: dict[str, set[TopicPartition]] = field(default_factory=dict)
    """This round's assignment: the target minus partitions another member still claims."""

    @property
    def complete(self) -> bool:
        """True when nothing waits for a follow-up round."""
        return self.now == self.target


def plan(partitions: Mapping[str, int], members: Mapping[str, Member]) -> Plan:
    """Compute the assignment of ``partitions`` (topic -> partition count) to ``members``.

    Pure and deterministic: the same input gives the same plan on any leader.
    """
    owner = _current_owners(partitions, members)
    target: dict[str, set[TopicPartition]] = {m: set() for m in members}
    load: dict[str, int] = dict.fromkeys(members, 0)
    for topic in sorted(partitions):
        subscribers = sorted(m for m, meta in members.items() if topic in meta.topics)
        if subscribers:
            _assign_topic(topic, partitions[topic], subscribers, owner, target, load)
    _even_out_totals(partitions, members, owner, target, load)
    claimed_by: dict[TopicPartition, set[str]] = defaultdict(set)
    for member_id, meta in members.items():
        for tp in meta.owned:
            claimed_by[tp].add(member_id)
    now = {m: {tp for tp in tps if not (claimed_by.get(tp, set()) - {m})} for m, tps in target.items()}
    return Plan(target=target, now=now)


def _current_owners(partitions: Mapping[str, int], members: Mapping[str, Member]) -> dict[TopicPartition, str]:
    """The owner of each partition: the claimant with the newest generation (then the lowest id)."""
    owner: dict[TopicPartition, str] = {}
    for member_id in sorted(members, key=lambda m: (-members[m].generation, m)):
        meta = members[member_id]
        for tp in meta.owned:
            # A claim on a topic the member no longer reads, or on a partition that no longer
            # exists, is void: it would be revoked anyway.
            if tp.topic in meta.topics and 0 <= tp.partition < partitions.get(tp.topic, 0):
                owner.setdefault(tp, member_id)
    return owner


def _assign_topic(topic: str, count: int, subscribers: list[str], owner: Mapping[TopicPartition, str],
                  target: dict[str, set[TopicPartition]], load: dict[str, int]) -> None:
    """Give each subscriber count // n or count // n + 1 partitions of ``topic``, keeping owned ones."""
    floor, extras = divmod(count, len(subscribers))
    kept: dict[str, list[TopicPartition]] = {m: [] for m in subscribers}
    for p in range(count):
        tp = TopicPartition(topic, p)
        if owner.get(tp) in kept:
            kept[owner[tp]].append(tp)
    # The members that own more than their floor keep one extra first, the least loaded first.
    quota = dict.fromkeys(subscribers, floor)
    for m in sorted((m for m in subscribers if len(kept[m]) > floor), key=lambda m: (load[m], m)):
        if extras == 0:
            break
        quota[m] += 1
        extras -= 1
    # Any extras left go to the least loaded members.
    for m in sorted((m for m in subscribers if quota[m] == floor), key=lambda m: (load[m], m)):
        if extras == 0:
            break
        quota[m] += 1
        extras -= 1
    for m in subscribers:
        kept[m] = kept[m][:quota[m]]
    assigned = {tp for tps in kept.values() for tp in tps}
    free = [TopicPartition(topic, p) for p in reversed(range(count)) if TopicPartition(topic, p) not in assigned]
    for m in subscribers:
        while len(kept[m]) < quota[m]:
            kept[m].append(free.pop())
        target[m].update(kept[m])
        load[m] += len(kept[m])


def _even_out_totals(partitions: Mapping[str, int], members: Mapping[str, Member],
                     owner: Mapping[TopicPartition, str], target: dict[str, set[TopicPartition]],
                     load: dict[str, int]) -> None:
    """Move per-topic extras from the most to the least loaded members, keeping every topic balanced."""
    for _ in range(sum(partitions.values())):
        moved = False
        for heavy in sorted(members, key=lambda m: (-load[m], m)):
            for light in sorted(members, key=lambda m: (load[m], m)):
                if load[heavy] - load[light] <= 1:
                    break
                tp = _movable(heavy, light, members, owner, target)
                if tp is not None:
                    target[heavy].discard(tp)
                    target[light].add(tp)
                    load[heavy] -= 1
                    load[light] += 1
                    moved = True
                    break
            if moved:
                break
        if not moved:
            return


def _movable(heavy: str, light: str, members: Mapping[str, Member], owner: Mapping[TopicPartition, str],
             target: Mapping[str, set[TopicPartition]]) -> TopicPartition | None:
    """A partition of a topic where ``heavy`` holds one more than ``light``, preferring one it does not own yet."""
    mine: dict[str, list[TopicPartition]] = defaultdict(list)
    for tp in target[heavy]:
        mine[tp.topic].append(tp)
    theirs: dict[str, int] = defaultdict(int)
    for tp in target[light]:
        theirs[tp.topic] += 1
    for topic in sorted(mine):
        if topic in members[light].topics and len(mine[topic]) == theirs[topic] + 1:
            return min(mine[topic], key=lambda tp: (owner.get(tp) == heavy, -tp.partition))
    return None


class BalancedAssignor(AbstractPartitionAssignor):
    """kafka-python plug-in for :func:`plan` (``partition_assignment_strategy=[BalancedAssignor()]``)."""

    name = "ktasks-balanced"
    version = _SUBSCRIPTION_VERSION

    def __init__(self) -> None:
        self._owned: list[TopicPartition] = []
        self._generation = -1
        self._current: Callable[[], Iterable[TopicPartition]] | None = None

    def bind(self, current_assignment: Callable[[], Iterable[TopicPartition]]) -> None:
        """Claim what the consumer really owns at each join (``KafkaConsumer.assignment``).

        The last assignment received is not enough: after partitions are lost (a missed
        generation) kafka-python clears them without telling the assignor, and a stale claim
        would hold a partition back from its new owner, with no revoke to trigger the
        follow-up round.
        """
        self._current = current_assignment

    def supported_protocols(self) -> list[RebalanceProtocol]:
        return [RebalanceProtocol.COOPERATIVE]

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolSubscription:
        by_topic: dict[str, list[int]] = defaultdict(list)
        for tp in (self._current() if self._current is not None else self._owned):
            by_topic[tp.topic].append(tp.partition)
        owned = [ConsumerProtocolSubscription.TopicPartition(topic=t, partitions=sorted(ps))
                 for t, ps in sorted(by_topic.items())]
        return ConsumerProtocolSubscription(version=self.version, topics=sorted(topics), user_data=b"",
                                            owned_partitions=owned, generation_id=self._generation)

    def on_assignment(self, assignment: ConsumerProtocolAssignment, generation: int) -> None:
        self._owned = list(assignment.partitions())
        self._generation = generation

    def assign(self, cluster: Any, members: Iterable[Any]) -> dict[str, ConsumerProtocolAssignment]:
        group: dict[str, Member] = {}
        counts: dict[str, int] = {}
        for member in members:
            meta = member.metadata
            owned = frozenset(TopicPartition(t.topic, p) for t in (getattr(meta, "owned_partitions", None) or ())
                              for p in t.partitions)
            group[member.member_id] = Member(frozenset(meta.topics), owned, getattr(meta, "generation_id", -1))
            for topic in meta.topics:
                found = cluster.partitions_for_topic(topic)
                if found:
                    counts[topic] = max(found) + 1
                elif topic not in counts:
                    logger.warning("no metadata for subscribed topic %s yet; assigning none of it", topic)
        result = plan(counts, group)
        if not result.complete:
            logger.info("cooperative rebalance: %d partition(s) move after their owners release them",
                        sum(len(result.target[m] - result.now[m]) for m in result.target))
        out = {}
        for member_id, tps in result.now.items():
            by_topic: dict[str, list[int]] = defaultdict(list)
            for tp in tps:
                by_topic[tp.topic].append(tp.partition)
            out[member_id] = ConsumerProtocolAssignment(self.version, sorted((t, sorted(ps))
                                                                             for t, ps in by_topic.items()), b"")
        return out


class UpgradeCompatibleCooperativeSticky(CooperativeStickyAssignor):
    """kafka-python's cooperative-sticky, offered second, for a group that still has older workers.

    The broker picks the first protocol every member supports: while a rolling
    upgrade has workers that only know ``cooperative-sticky`` (the default
    before ``balanced``), the group keeps using it instead of refusing the new
    workers. kafka-python only tells the chosen assignor about assignments,
    so this one claims what the consumer really owns (``bind``), as
    :class:`BalancedAssignor` does: a group switching to it does not see
    owned partitions as free.
    """

    def __init__(self) -> None:
        super().__init__()
        self._current: Callable[[], Iterable[TopicPartition]] | None = None

    def bind(self, current_assignment: Callable[[], Iterable[TopicPartition]]) -> None:
        self._current = current_assignment

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolSubscription:
        if self._current is not None:
            self.member_assignment = list(self._current())
        return super().metadata(topics)
