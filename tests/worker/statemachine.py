"""Plain-object stand-ins for the broker-free tests of the worker's state machine.

Only what the parts call is here: a consumer's pause, resume and seek; a
pool's idle children; an outbox's publishes. Broker behaviour is shown by
the broker tests beside these, never by these fakes.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

from kafka import TopicPartition

from ktasks import App
from ktasks.message import Message, encode
from ktasks.worker.dispatch import Dispatcher
from ktasks.worker.outcomes import Outcomes, Stats
from ktasks.worker.partitions import Job, Partitions
from ktasks.worker.pool import ChildProc


@dataclass
class Record:
    topic: str
    partition: int
    offset: int
    value: bytes | None
    key: bytes | None = None
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    timestamp: int = 0
    timestamp_type: int = 0


class Consumer:
    """Remembers what the worker asked of it."""

    def __init__(self) -> None:
        self._paused: set[TopicPartition] = set()
        self.seeks: list[tuple[TopicPartition, int | str]] = []
        self.owned: set[TopicPartition] = set()

    def pause(self, tp: TopicPartition) -> None:
        self._paused.add(tp)

    def resume(self, tp: TopicPartition) -> None:
        self._paused.discard(tp)

    def paused(self) -> set[TopicPartition]:
        return set(self._paused)

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.seeks.append((tp, offset))

    def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.seeks.append((tp, "beginning"))

    def seek_to_end(self, tp: TopicPartition) -> None:
        self.seeks.append((tp, "end"))

    def assignment(self) -> set[TopicPartition]:
        return self.owned


@dataclass(eq=False)
class Child:
    index: int
    capacity: int = 1
    outstanding: dict[int, Any] = field(default_factory=dict)
    tasks_done: int = 0
    batches: list[list[int]] = field(default_factory=list)
    # What a real child shares with the parent: [seq claimed last, since or 0, seq taken back].
    state: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    claim_lock: Any = field(default_factory=threading.Lock)
    ahead: int | None = None
    ready: bool = True
    retiring: bool = False

    @property
    def idle(self) -> bool:
        return len(self.outstanding) < self.capacity

    running = ChildProc.running
    take_back = ChildProc.take_back

    def start(self, seq: int, ran_s: float = 0.0) -> None:
        """The child claims job ``seq`` (as the real one does before running it), ``ran_s`` ago."""
        self.state[0], self.state[1] = float(seq), time.monotonic() - ran_s

    def finish(self) -> None:
        self.state[1] = 0.0


class Pool:
    def __init__(self, n: int, capacity: int = 1) -> None:
        self.children = [Child(i, capacity) for i in range(n)]

    def idle(self) -> list[Child]:
        return [c for c in self.children if c.idle]

    def dispatch(self, child: Child, jobs: list[Job], payload: list[list[Any]]) -> None:
        for job in jobs:
            child.outstanding[job.seq] = job
        child.batches.append([j.offset for j in jobs])


class Outbox:
    """Records what would be published; ``fenced`` as the real one decides it."""

    def __init__(self, partitions: Partitions) -> None:
        self.partitions = partitions
        self.sent: list[tuple[str, int, Any]] = []

    def fenced(self, job: Job, what: str) -> bool:
        return not self.partitions.owns(job)

    def retry(self, job: Job, delay_s: float, exc_type: str | None, exc_message: str | None) -> None:
        self.sent.append(("retry", job.offset, delay_s))

    def delay(self, job: Job, due: float, from_tier: bool) -> None:
        job.takes_key = False
        self.sent.append(("delay", job.offset, due))

    def dead_letter(self, job: Job, reason: str, *rest: Any) -> None:
        self.sent.append(("dead-letter", job.offset, reason))


@dataclass
class Settings:
    max_batch: int = 64
    max_tasks_per_child: int = 0


class Machine:
    """Partitions, outcomes and the dispatcher wired as the worker wires them, around the fakes."""

    def __init__(self, children: int = 1, prefetch: int = 10, **settings: Any) -> None:
        self.app = App("statemachine", bootstrap_servers="localhost:1")

        @self.app.task(name="quick")
        def quick() -> None: ...

        self.task = quick
        self.consumer = Consumer()
        self.partitions = Partitions(prefetch)
        self.partitions.consumer = self.consumer
        self.pool = Pool(children)
        self.outcomes = Outcomes(self.app, self.partitions, Stats(), release=lambda j: self.dispatcher.queue_first(j))
        self.dispatcher = Dispatcher(self.pool, self.partitions, self.outcomes,  # type: ignore[arg-type]
                                     Settings(**settings), stopping=lambda: False)
        self.outbox = Outbox(self.partitions)
        self.outcomes.outbox = self.outbox  # type: ignore[assignment]
        self.seq = 0

    def job(self, tp: TopicPartition, offset: int, key: bytes | None = None) -> Job:
        """A decoded record of the quick task at ``offset``, tracked as taken."""
        ps = self.partitions.get(tp)
        assert ps is not None
        self.seq += 1
        msg = Message(task="quick")
        ps.tracker.add(offset)
        return Job(self.seq, ps, Record(tp.topic, tp.partition, offset, encode(msg), key), msg, self.task, tp.topic)
