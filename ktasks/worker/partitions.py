"""What the worker knows of its partitions: one state per assignment, offsets, key queues, holds, pauses.

A :class:`PartitionState` lives for one assignment of one partition (its
*epoch*): a revoke, a loss or a reset to the committed offset replaces it,
and anything still referring to the old state (a job in a child, a publish
on its way) is *fenced*: :meth:`Partitions.owns` says no, and its outcome is
dropped, because the partition's next owner runs the record again.

Records with the same key run one at a time, in offset order: the first
takes the key (:meth:`Partitions.take_key`), the others wait behind it and
are handed on one by one as each finishes (:meth:`Partitions.release_key`).

Pure state plus the consumer's pause, resume and seek: no I/O of its own, so
it is tested with plain objects (tests/worker/test_partitions.py).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from ..kafka import TopicPartition
from ..logs import task_extra
from ..message import Message
from . import offsetmap
from .offsets import OffsetTracker

logger = logging.getLogger(__name__)

__all__ = ["PartitionState", "Job", "Partitions"]


@dataclass(eq=False)
class PartitionState:
    """What the worker knows of one assigned partition, for one assignment (its epoch)."""

    tp: TopicPartition
    epoch: int
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    keys: dict[bytes, deque[Job]] = field(default_factory=dict)   # key -> jobs waiting behind the running one
    finished: dict[int, Job] = field(default_factory=dict)        # finished, not yet committed
    hold_until: float | None = None    # a delay-tier record not yet due: partition paused until then
    capped_hold: int | None = None     # offset held for the tier's delay only: moved on if still not due
    paused: bool = False
    revoking: bool = False


@dataclass(eq=False)
class Job:
    """One record the worker took, from intake until its offset is committed."""

    seq: int
    ps: PartitionState
    record: Any                       # kafka ConsumerRecord
    message: Message | None
    task: Any                         # Task or None for records that never reach a child
    origin_topic: str
    force: bool = False
    value: bytes | None = None        # what the child gets, when it differs from the record's value
    replay: bool = False              # replayed from the dead-letter topic
    takes_key: bool = True            # went through the ready queue (holds its key while running)
    defer_until: float | None = None  # deferred in memory by an intake middleware until then

    @property
    def offset(self) -> int:
        return int(self.record.offset)

    def holds_key(self) -> bool:
        # Only records that went through the ready queue hold their key; dead-lettered
        # undecodable or unregistered records, and records moved to a delay tier, never took it.
        return self.takes_key and self.message is not None and self.task is not None

    def log_extra(self) -> dict[str, Any]:
        """``extra=`` for log lines about this job (task fields in text and JSON logs)."""
        m = self.message
        return task_extra(m.task if m else "?", m.id if m else "?", self.record.topic, self.record.partition,
                          self.record.offset)


class Partitions:
    """The partitions this worker owns now, and what it does to the consumer for them.

    ``consumer`` needs ``pause``, ``resume``, ``paused``, ``seek``,
    ``seek_to_beginning`` and ``seek_to_end`` (a KafkaConsumer, or a fake in
    unit tests). Whoever else keeps jobs (the ready queue, the outbox)
    subscribes with :meth:`on_drop` to forget those of dropped partitions.
    """

    def __init__(self, prefetch_per_partition: int, auto_offset_reset: str = "earliest") -> None:
        self.consumer: Any = None
        self.states: dict[TopicPartition, PartitionState] = {}
        self.prefetch = prefetch_per_partition
        self.auto_offset_reset = auto_offset_reset
        self.epoch = 0
        self._forget: list[Callable[[set[TopicPartition]], None]] = []

    # -- ownership -------------------------------------------------------------
    def get(self, tp: TopicPartition) -> PartitionState | None:
        return self.states.get(tp)

    def __contains__(self, tp: object) -> bool:
        return tp in self.states

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(list(self.states.values()))

    def owns(self, job: Job) -> bool:
        """Whether ``job``'s assignment (epoch) is still ours; a revoking partition still owns its jobs."""
        return self.states.get(job.ps.tp) is job.ps

    def start(self, tp: TopicPartition, committed: int | None, offset_map: str = "") -> PartitionState:
        """A fresh state (a new epoch) at the committed offset, or where ``auto_offset_reset`` says."""
        self.epoch += 1
        if committed is None:
            if self.auto_offset_reset == "earliest":
                self.consumer.seek_to_beginning(tp)
            else:
                self.consumer.seek_to_end(tp)
            ps = PartitionState(tp, self.epoch)
        else:
            self.consumer.seek(tp, committed)
            earlier = offsetmap.decode(offset_map, committed)
            ps = PartitionState(tp, self.epoch, tracker=OffsetTracker(committed, earlier))
        self.states[tp] = ps
        return ps

    def on_drop(self, forget: Callable[[set[TopicPartition]], None]) -> None:
        """Call ``forget(tps)`` whenever partitions are dropped (their jobs are no longer ours)."""
        self._forget.append(forget)

    def drop(self, tps: Iterable[TopicPartition]) -> set[TopicPartition]:
        gone = set(tps)
        for tp in gone:
            self.states.pop(tp, None)
        for forget in self._forget:
            forget(gone)
        return gone

    def clear(self) -> None:
        self.states.clear()

    # -- keys ------------------------------------------------------------------
    def take_key(self, job: Job) -> bool:
        """True if ``job`` may run now; False if its key runs and it was queued behind it."""
        key = job.record.key
        if key is None:
            return True
        waiting = job.ps.keys.get(key)
        if waiting is not None:
            waiting.append(job)       # same key is running: strictly after it
            return False
        job.ps.keys[key] = deque()
        return True

    def release_key(self, job: Job) -> Job | None:
        """``job`` finished: the next job of its key, to run next, if one waits."""
        key = job.record.key
        if key is None or not job.holds_key():
            return None
        waiting = job.ps.keys.get(key)
        if waiting is None:
            return None
        if waiting:
            return waiting.popleft()
        del job.ps.keys[key]
        return None

    # -- holds and pauses --------------------------------------------------------
    def hold(self, ps: PartitionState, offset: int, until: float, capped: bool) -> None:
        """Seek back to ``offset`` and pause the partition until ``until`` (epoch seconds)."""
        ps.tracker.rewind(offset)
        self.consumer.seek(ps.tp, offset)
        ps.hold_until = until
        ps.capped_hold = offset if capped else None
        self.update_pause(ps)

    def release_holds(self, now: float) -> None:
        for ps in self.states.values():
            if ps.hold_until is not None and ps.hold_until <= now:
                ps.hold_until = None
                self.update_pause(ps)

    def update_pause(self, ps: PartitionState) -> None:
        """Pause a partition held or with too many records in flight; resume it when it drained to half."""
        backlog = ps.tracker.in_flight
        limit = self.prefetch
        want = ps.hold_until is not None or backlog >= limit or (ps.paused and backlog > limit // 2)
        if want and not ps.paused:
            self.consumer.pause(ps.tp)
            ps.paused = True
            logger.debug("paused %s/%d (%d in flight, hold until %s)", ps.tp.topic, ps.tp.partition, backlog,
                         ps.hold_until)
        elif not want and ps.paused:
            self.consumer.resume(ps.tp)
            ps.paused = False
            logger.debug("resumed %s/%d (%d in flight)", ps.tp.topic, ps.tp.partition, backlog)

    def sync_paused(self, only: Iterable[PartitionState] | None = None) -> None:
        # kafka-python keeps the paused flag of a partition across an eager revoke and assign,
        # while our state for it is new ("not paused"): nothing would ever resume it. Take the
        # consumer's word for what is paused, then decide again.
        paused = set(self.consumer.paused())
        for ps in (self.states.values() if only is None else only):
            ps.paused = ps.tp in paused
            self.update_pause(ps)

    def pause_all(self) -> None:
        for ps in self.states.values():
            if not ps.paused:
                self.consumer.pause(ps.tp)
                ps.paused = True
