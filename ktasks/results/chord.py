"""The chord join, in Kafka: ``<app>.chords``, partitioned by chord id, counted by its owner.

Records on the chords topic (msgpack maps, keyed by chord id, so one chord's
records share a partition and stay in order)::

    {"v": 1, "kind": "start",  "chord": id, "n": int, "cb": signature data, "meta": {...}}
    {"v": 1, "kind": "member", "chord": id, "i": int, "result": result record bytes}
    {"v": 1, "kind": "done",   "chord": id}

The sender writes ``start`` (and waits for its acknowledgement) before it
sends the members, so a member's outcome always follows its chord's start.
Each worker runs a :class:`ChordJoiner`: a consumer in group
``<group>.chords`` that counts the members of the chords on the partitions it
owns. When every member succeeded it sends the callback (task id and ledger
idempotency key fixed by the chord), waits for its acknowledgement, then
writes ``done``; when a member failed it publishes the chord's failure instead.

Exactly once across a crash of the owner: the joiner commits a partition's
offset only up to the ``start`` of its oldest unfinished chord, so the next
owner re-reads every unfinished chord from its start and rebuilds the count.
A chord whose ``done`` it reads is never finished again. A crash between the
callback's acknowledgement and ``done`` makes the next owner send the callback
again, with the same task id and idempotency key: the ledger skips it (the
ledger is per host: with workers on several hosts, that window can run the
callback twice; docs/guarantees.md).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DecodeError
from ..kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition, client_config
from ..kafka.errors import KafkaError
from ..message import pack, unpack
from ..readiness import log_failure
from .records import META_STORE, ResultRecord, chords_topic, partition_for

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["ChordJoiner", "ChordState", "start_chord", "send_member"]

_VERSION = 1


@dataclass
class ChordState:
    """One chord being counted: its start's offset, size, callback and the members' outcomes so far."""

    chord: str
    offset: int
    n: int
    callback: dict[str, Any]
    meta: dict[str, Any]
    outcomes: dict[int, ResultRecord] = field(default_factory=dict)

    def add(self, index: int, record: ResultRecord) -> None:
        if 0 <= index < self.n:
            self.outcomes[index] = record       # a re-run member's outcome replaces its first one

    @property
    def failure(self) -> tuple[int, ResultRecord] | None:
        for i, record in sorted(self.outcomes.items()):
            if not record.ok:
                return i, record
        return None

    @property
    def complete(self) -> bool:
        return len(self.outcomes) == self.n

    def values(self) -> list[Any]:
        return [self.outcomes[i].value for i in range(self.n)]


def _topic_partition(app: App, chord_id: str) -> int:
    topic = chords_topic(app)
    if topic not in app._ensured:
        app.ensure_topics([topic])
    partitions = app.topics.partitions_of(topic) or app.settings.partitions
    return partition_for(chord_id, partitions)


def _send(app: App, chord_id: str, body: dict[str, Any]) -> Any:
    body = {"v": _VERSION, "chord": chord_id, **body}
    return app.send_raw(chords_topic(app), pack(body), key=chord_id.encode(),
                        partition=_topic_partition(app, chord_id))


def start_chord(app: App, chord_id: str, n: int, callback: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write a chord's start and wait for it (eager mode: remember it in memory)."""
    if app.settings.eager:
        _eager_chords(app)[chord_id] = ChordState(chord_id, 0, n, callback, meta)
        return
    future = _send(app, chord_id, {"kind": "start", "n": n, "cb": callback, "meta": meta})
    future.get(timeout=app.settings.send_timeout_ms / 1000.0)


def send_member(app: App, chord_id: str, index: int, record: ResultRecord) -> Any:
    """Report member ``index``'s outcome to its chord's partition; returns the send future."""
    return _send(app, chord_id, {"kind": "member", "i": index, "result": record.encode()})


def finish(app: App, state: ChordState) -> None:
    """Send the callback of a chord whose members all succeeded, or publish its failure."""
    from .middleware import results_middleware

    callback_id = state.callback["id"]
    failure = state.failure
    if failure is not None:
        index, member = failure
        record = ResultRecord(callback_id, member.task, False, None, member.exc,
                              f"chord member {index} {member.task}[{member.id}] failed", time.time(), member.exp)
        logger.info("chord %s: member %d %s[%s] failed; not running its callback", state.chord, index,
                    member.task, member.id)
        mw = results_middleware(app)
        if app.settings.eager:
            mw.eager_results[callback_id] = record
            return
        for future in mw.send_result(record, state.meta.get("reply")):
            future.get(timeout=app.settings.send_timeout_ms / 1000.0)
        return
    logger.info("chord %s: all %d members succeeded; sending its callback %s[%s]", state.chord, state.n,
                state.callback["task"], callback_id)
    meta = {**state.meta, META_STORE: True}
    data = {**state.callback}
    args = list(data["args"]) if data.get("imm") else [state.values(), *data["args"]]
    handle = app.send_task(data["task"], args=args, kwargs=dict(data["kwargs"]), task_id=callback_id,
                           idempotency_key=f"chord-{state.chord}", meta=meta)
    if not app.settings.eager:
        handle.wait_sent()


def _eager_chords(app: App) -> dict[str, ChordState]:
    from .middleware import results_middleware

    mw = results_middleware(app)
    chords: dict[str, ChordState] | None = getattr(mw, "eager_chords", None)
    if chords is None:
        chords = mw.eager_chords = {}   # type: ignore[attr-defined]
    return chords


def eager_member(app: App, chord_id: str, index: int, record: ResultRecord) -> None:
    state = _eager_chords(app).get(chord_id)
    if state is None:
        return
    state.add(index, record)
    if state.failure is not None or state.complete:
        del _eager_chords(app)[chord_id]
        finish(app, state)


#: Bounds on the joiner's own commit and close (kafka-python waits without end by default).
_COMMIT_TIMEOUT_MS = 5000
_CLOSE_TIMEOUT_MS = 2000


class ChordJoiner:
    """The worker's chord join: a thread with its own consumer in group ``<group>.chords``."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.topic = chords_topic(app)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="ktasks-chord-join", daemon=True)
        self._states: dict[int, dict[str, ChordState]] = {}
        self._done: dict[int, set[str]] = {}
        self._assigned: set[TopicPartition] = set()
        #: What this joiner last committed: a commit is sent only when a position moved.
        self._committed: dict[TopicPartition, int] = {}

    def start(self) -> None:
        self._thread.start()

    def stop(self, wait: bool = True) -> None:
        """Tell the thread to stop; with ``wait``, wait for it (up to 30 s)."""
        self._stop.set()
        if wait:
            self._thread.join(timeout=30)

    def _consumer(self) -> KafkaConsumer:
        s = self.app.settings
        consumer = KafkaConsumer(**client_config(s, "consumer", dict(
            group_id=f"{self.app.group_id}.chords",
            client_id=f"{self.app.client_id}-chords@{socket.gethostname()}:{os.getpid()}",
            enable_auto_commit=False, auto_offset_reset="earliest", session_timeout_ms=s.session_timeout_ms,
            # A member sent in a transaction that aborted (--transactional) must not count.
            isolation_level="read_committed",
            heartbeat_interval_ms=s.heartbeat_interval_ms, bootstrap_timeout_ms=max(10000, s.send_timeout_ms))))
        # Its polls are short (200 ms): a group join finishing between two of them must not be
        # thrown away, or under load the joiner rejoins forever and never owns a partition.
        from ..kafka.joinfix import collect_finished_joins

        collect_finished_joins(consumer)
        return consumer

    def _run(self) -> None:
        consumer: KafkaConsumer | None = None
        while not self._stop.is_set():
            try:
                if consumer is None:
                    self.app.ensure_topics([self.topic])
                    consumer = self._consumer()
                    # Subscribe only once the topic's partitions are in this consumer's metadata: a
                    # group assigned before then gets nothing until the next metadata refresh (5 min).
                    while not consumer.partitions_for_topic(self.topic) and not self._stop.wait(0.2):
                        pass
                    consumer.subscribe([self.topic])
                self._step(consumer)
            except Exception as exc:   # noqa: BLE001 - a dead joiner would leave every chord of its partitions hanging
                log_failure(logger, "chord joiner", exc, "reconnecting")
                if consumer is not None:
                    consumer.close(autocommit=False, timeout_ms=_CLOSE_TIMEOUT_MS)
                consumer = None
                self._states.clear()
                self._done.clear()
                self._committed.clear()
                self._stop.wait(1.0)
        if consumer is not None:
            consumer.close(autocommit=False, timeout_ms=_CLOSE_TIMEOUT_MS)

    def _step(self, consumer: KafkaConsumer) -> None:
        batches = consumer.poll(timeout_ms=200)
        assigned = set(consumer.assignment())
        if assigned != self._assigned:
            # A partition lost and given back restarts from its committed offset: forget what we counted.
            for tp in self._assigned ^ assigned:
                self._states.pop(tp.partition, None)
                self._done.pop(tp.partition, None)
            self._assigned = assigned
            self._committed = {tp: at for tp, at in self._committed.items() if tp in assigned}
            logger.info("chord joiner owns %s", sorted(tp.partition for tp in assigned))
        for tp, records in batches.items():
            for record in records:
                self._handle(tp.partition, record)
        self._finish_ready(consumer, assigned)
        if assigned:
            offsets = {}
            for tp in assigned:
                open_chords = self._states.get(tp.partition, {})
                at = min((s.offset for s in open_chords.values()), default=consumer.position(tp))
                if self._committed.get(tp) != at:
                    offsets[tp] = OffsetAndMetadata(at, "", -1)
            if offsets:
                # Every 200 ms, unchanged, was a commit a second five times over per worker; and
                # bounded, so a broker gone away holds a stopping worker for seconds, not longer.
                consumer.commit(offsets, timeout_ms=_COMMIT_TIMEOUT_MS)
                self._committed.update({tp: o.offset for tp, o in offsets.items()})

    def _handle(self, partition: int, record: Any) -> None:
        try:
            body = unpack(record.value)
            if not isinstance(body, dict) or body.get("v") != _VERSION or not isinstance(body.get("chord"), str):
                raise DecodeError("not a chord record")
        except Exception as exc:   # noqa: BLE001 - any garbage on the topic is skipped, never fatal
            logger.warning("chord joiner: %s@%d unreadable (%s): skipped", record.topic, record.offset, exc)
            return
        chord_id, kind = body["chord"], body.get("kind")
        states = self._states.setdefault(partition, {})
        done = self._done.setdefault(partition, set())
        if kind == "done":
            states.pop(chord_id, None)
            done.add(chord_id)
        elif kind == "start" and chord_id not in done:
            states[chord_id] = ChordState(chord_id, record.offset, int(body["n"]), body["cb"], body.get("meta") or {})
        elif kind == "member":
            state = states.get(chord_id)
            if state is None:
                return      # its chord is done, or started before what this owner read
            try:
                state.add(int(body["i"]), ResultRecord.decode(body["result"]))
            except (DecodeError, KeyError, TypeError, ValueError) as exc:
                logger.warning("chord joiner: member record of %s unreadable (%s): skipped", chord_id, exc)
                return

    def _finish_ready(self, consumer: KafkaConsumer, assigned: set[TopicPartition]) -> None:
        """Finish the chords whose members are all in, once their partition is read to its end.

        Only at the end: a ``done`` written by a previous owner lies after the
        members it counted, and must be seen before deciding to finish again.
        """
        for tp in assigned:
            states = self._states.get(tp.partition, {})
            ready = [s for s in states.values() if s.failure is not None or s.complete]
            if not ready or consumer.position(tp) < consumer.end_offsets([tp])[tp]:
                continue
            for state in ready:
                try:
                    finish(self.app, state)
                    _send(self.app, state.chord, {"kind": "done"}).get(
                        timeout=self.app.settings.send_timeout_ms / 1000.0)
                except KafkaError:
                    logger.exception("chord %s: could not finish; the next owner will", state.chord)
                    raise
                states.pop(state.chord, None)
                self._done.setdefault(tp.partition, set()).add(state.chord)
