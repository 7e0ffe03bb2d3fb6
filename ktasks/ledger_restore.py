"""Ledger changelog records, and restoring a partition's entries into the local ledger.

The changelog of a task topic (``<task topic><ledger_changelog_suffix>``) is a
compacted topic with as many partitions as the task topic: the transitions of
records of task partition *p* (and of its retry tiers' partition *p*) go to its
partition *p*. A start is one record keyed by the ledger entry (its key and
task), so compaction keeps the last transition of each entry; the finishes a
worker learns in one round of its loop go out as one record per partition
(format version 2, under a key of its own that compaction never merges), as
a record per task would be most of the parent's work for quick tasks.
Restore applies both in offset order. This module owns the record format
(msgpack, data only) and the restore: before a worker dispatches any record
of a newly assigned partition, it reads that partition's changelog from its
checkpoint (the offset it had restored up to, kept in the ledger file) to the
end, and applies every transition to its local SQLite ledger, where the
children's :meth:`ktasks.ledger.Ledger.begin` then sees it. See
docs/ledger.md#the-changelog.

Applying is a merge, never a blind overwrite: a success is final; a failure or
poison mark replaces only an older entry that is not a success; a start raises
the count of unfinished starts to the recorded one, and a start recorded here
by a live local process keeps its owner.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import DecodeError
from .kafka import KafkaConsumer, TopicPartition, client_config
from .kafka.errors import KafkaError
from .ledger import FAILED, POISONED, STARTED, SUCCEEDED
from .ledger_schema import TABLE, immediate, ledger_error
from .message import pack, unpack
from .settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["Transition", "encode_key", "encode_value", "encode_batch", "decode", "decode_all", "Restorer",
           "CHECKPOINTS", "RestoreResult"]

#: Format version of a value holding one transition, keyed by its entry; an unknown one is skipped.
VERSION = 1
#: Format version of a value holding several transitions in order (a batch of finishes).
BATCH_VERSION = 2
#: The table of checkpoints in the ledger file: changelog partition -> next offset to read.
CHECKPOINTS = "ktasks_changelog_checkpoints"
_STATES = (STARTED, SUCCEEDED, FAILED, POISONED)
_NOTE = "restored from the ledger changelog"


@dataclass(frozen=True)
class Transition:
    """One ledger transition as the changelog carries it."""

    key: str
    task: str
    state: str
    at: float                       # when it happened (epoch seconds, the writer's clock)
    starts: int = 0                 # unfinished starts (a start record); 0 after a finish
    attempt: int = 0
    host: str | None = None
    pid: int | None = None
    pid_start: int | None = None


def encode_key(key: str, task: str) -> bytes:
    """The record key: the ledger entry's key and task (two tasks may share an idempotency key)."""
    return pack([key, task])


def encode_value(t: Transition) -> bytes:
    return pack({"v": VERSION, "s": t.state, "t": t.at, "n": t.starts, "a": t.attempt, "h": t.host,
                 "p": t.pid, "ps": t.pid_start})


def encode_batch(transitions: Iterable[Transition]) -> tuple[bytes, bytes]:
    """One record (key, value) holding ``transitions`` in order.

    The key is unique, so compaction never drops the record for a later one: it
    leaves with retention (``ledger_retention_s``), as the ledger prunes entries.
    """
    entries = [[t.key, t.task, t.state, t.at, t.starts, t.attempt, t.host, t.pid, t.pid_start]
               for t in transitions]
    return pack(["", uuid.uuid4().hex]), pack({"v": BATCH_VERSION, "e": entries})


def decode(key: bytes | None, value: bytes | None) -> Transition:
    """The transition of a one-transition record; :class:`DecodeError` saying what is wrong otherwise."""
    found = decode_all(key, value)
    if len(found) != 1:
        raise DecodeError(f"ledger changelog record holds {len(found)} transitions, not one")
    return found[0]


def decode_all(key: bytes | None, value: bytes | None) -> list[Transition]:
    """The transitions of a changelog record, in order; :class:`DecodeError` saying what is wrong otherwise."""
    if key is None or value is None:
        raise DecodeError("ledger changelog record without a key or a value")
    try:
        k, v = unpack(key), unpack(value)
    except Exception as exc:
        raise DecodeError(f"ledger changelog record is not msgpack: {type(exc).__name__}: {exc}") from exc
    if isinstance(v, dict) and v.get("v") == BATCH_VERSION:
        return _decode_batch(v)
    if not (isinstance(k, list) and len(k) == 2 and all(isinstance(x, str) for x in k)):
        raise DecodeError(f"ledger changelog key must be [key, task], got {k!r:.80}")
    if not isinstance(v, dict) or v.get("v") != VERSION or v.get("s") not in _STATES:
        raise DecodeError(f"ledger changelog value of an unknown version or state: {v!r:.120}")
    try:
        return [Transition(k[0], k[1], v["s"], float(v["t"]), int(v.get("n") or 0), int(v.get("a") or 0),
                           v.get("h"), v.get("p"), v.get("ps"))]
    except (KeyError, TypeError, ValueError) as exc:
        raise DecodeError(f"ledger changelog value has a bad field: {exc}") from exc


def _decode_batch(v: dict[str, object]) -> list[Transition]:
    entries = v.get("e")
    if not isinstance(entries, list):
        raise DecodeError(f"ledger changelog batch without its list of entries: {v!r:.120}")
    out: list[Transition] = []
    for i, e in enumerate(entries):
        if not (isinstance(e, list) and len(e) == 9 and isinstance(e[0], str) and isinstance(e[1], str)
                and e[2] in _STATES):
            raise DecodeError(f"ledger changelog batch entry {i} must be [key, task, state, at, starts, attempt, "
                              f"host, pid, pid_start], got {e!r:.120}")
        try:
            out.append(Transition(e[0], e[1], e[2], float(e[3]), int(e[4] or 0), int(e[5] or 0), e[6], e[7],
                                  e[8]))
        except (TypeError, ValueError) as exc:
            raise DecodeError(f"ledger changelog batch entry {i} has a bad field: {exc}") from exc
    return out


# A success is final; it keeps a local entry's result and run time.
_APPLY_SUCCEEDED = (
    f"INSERT INTO {TABLE} (key, task, state, finished_at, note, updated_at) VALUES (?, ?, '{SUCCEEDED}', ?, "
    f"'{_NOTE}', ?) ON CONFLICT(key, task) DO UPDATE SET state = '{SUCCEEDED}', starts = 0, "
    "finished_at = excluded.finished_at, note = excluded.note, updated_at = excluded.updated_at "
    f"WHERE state != '{SUCCEEDED}'"
)
# A failure or a poison mark replaces an older entry that is not a success.
_APPLY_FINISH = (
    f"INSERT INTO {TABLE} (key, task, state, starts, finished_at, note, updated_at) VALUES (?, ?, ?, ?, ?, "
    f"'{_NOTE}', ?) ON CONFLICT(key, task) DO UPDATE SET state = excluded.state, starts = excluded.starts, "
    "finished_at = excluded.finished_at, note = excluded.note, updated_at = excluded.updated_at "
    f"WHERE state != '{SUCCEEDED}' AND updated_at <= excluded.updated_at"
)
# A start raises the count of unfinished starts; an entry started here keeps its owner (a
# live local process must still be recognised as running), a finished one older than the
# start takes the start's owner, whose pid can then never pass for a local live process.
_APPLY_START = (
    f"INSERT INTO {TABLE} (key, task, state, attempt, starts, total_starts, host, pid, pid_start, started_at, "
    f"note, updated_at) VALUES (?, ?, '{STARTED}', ?, ?, ?, ?, ?, ?, ?, '{_NOTE}', ?) "
    f"ON CONFLICT(key, task) DO UPDATE SET "
    f"starts = CASE WHEN state = '{STARTED}' THEN max(starts, excluded.starts) ELSE excluded.starts END, "
    f"host = CASE WHEN state = '{STARTED}' THEN host ELSE excluded.host END, "
    f"pid = CASE WHEN state = '{STARTED}' THEN pid ELSE excluded.pid END, "
    f"pid_start = CASE WHEN state = '{STARTED}' THEN pid_start ELSE excluded.pid_start END, "
    f"started_at = CASE WHEN state = '{STARTED}' THEN started_at ELSE excluded.started_at END, "
    f"attempt = max(attempt, excluded.attempt), state = '{STARTED}', finished_at = NULL, "
    "updated_at = max(updated_at, excluded.updated_at) "
    f"WHERE state = '{STARTED}' OR (state = '{FAILED}' AND updated_at < excluded.updated_at)"
)


def apply(conn: sqlite3.Connection, t: Transition) -> None:
    """Merge one transition into the ledger (inside the caller's write transaction)."""
    if t.state == SUCCEEDED:
        conn.execute(_APPLY_SUCCEEDED, (t.key, t.task, t.at, t.at))
    elif t.state in (FAILED, POISONED):
        conn.execute(_APPLY_FINISH, (t.key, t.task, t.state, t.starts if t.state == POISONED else 0, t.at, t.at))
    else:
        conn.execute(_APPLY_START, (t.key, t.task, t.attempt, t.starts, t.starts, t.host, t.pid, t.pid_start,
                                    t.at, t.at))


@dataclass
class RestoreResult:
    """What one restore of one changelog partition did."""

    tp: TopicPartition
    start: int | None           # checkpoint it started from (None: the beginning)
    end: int                    # end offset it had to reach
    position: int               # where it got to
    applied: int = 0
    skipped: int = 0            # records that could not be decoded

    @property
    def complete(self) -> bool:
        return self.position >= self.end


class Restorer:
    """Reads changelog partitions into one ledger file; one per worker parent, used from one thread."""

    def __init__(self, settings: Settings, ledger_path: str | os.PathLike[str], client_id: str) -> None:
        self.settings = settings
        self.ledger_path = os.fspath(ledger_path)
        self.client_id = client_id
        self._consumer: KafkaConsumer | None = None
        self._lock = threading.Lock()

    def warm(self) -> None:
        """Build the consumer on a background thread, so the first assignment's restore does not wait for
        its bootstrap (about 0.1 s: connecting and probing the broker's API versions)."""
        def build() -> None:
            try:
                self.consumer()
            except Exception as exc:   # the restore builds it again and reports the error
                logger.debug("ledger changelog: restore consumer not built in advance: %s", exc)

        threading.Thread(target=build, name="ktasks-restore-warm", daemon=True).start()

    def _conn(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(self.ledger_path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA busy_timeout = 30000")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {CHECKPOINTS} (topic TEXT NOT NULL, partition INTEGER "
                         "NOT NULL, next_offset INTEGER NOT NULL, updated_at REAL NOT NULL, "
                         "PRIMARY KEY (topic, partition))")
        except sqlite3.Error as exc:
            raise ledger_error(f"restore into {self.ledger_path}", exc) from exc
        return conn

    def checkpoints(self) -> dict[TopicPartition, int]:
        """Every checkpoint in the ledger file: changelog partition -> next offset to read."""
        conn = self._conn()
        try:
            rows = conn.execute(f"SELECT topic, partition, next_offset FROM {CHECKPOINTS}").fetchall()
        finally:
            conn.close()
        return {TopicPartition(t, p): o for t, p, o in rows}

    def consumer(self) -> KafkaConsumer:
        with self._lock:
            return self._build_consumer()

    def _build_consumer(self) -> KafkaConsumer:
        if self._consumer is None:
            cfg = client_config(self.settings, "consumer", dict(
                enable_auto_commit=False, auto_offset_reset="earliest",
                # A transactional worker's successes are on the changelog only once committed.
                isolation_level="read_committed",
                client_id=f"{self.client_id}-restore@{socket.gethostname()}:{os.getpid()}"))
            cfg["group_id"] = None    # by assignment, whatever kafka_options say
            self._consumer = KafkaConsumer(**cfg)
        return self._consumer

    def restore(self, tps: Iterable[TopicPartition], timeout_s: float) -> list[RestoreResult]:
        """Read each changelog partition from its checkpoint to its end offset into the ledger.

        Returns one result per partition; an incomplete one (``complete`` false) ran out of
        ``timeout_s`` or met a broker error, and its checkpoint keeps what was applied.
        """
        tps = sorted(set(tps))
        if not tps:
            return []
        deadline = time.monotonic() + timeout_s
        conn = self._conn()
        try:
            start = dict(self._read_checkpoints(conn, tps))
            consumer = self.consumer()
            consumer.assign(tps)
            ends: dict[TopicPartition, int] = consumer.end_offsets(tps)
            results = {tp: RestoreResult(tp, start.get(tp), int(ends.get(tp) or 0), start.get(tp) or 0)
                       for tp in tps}
            for tp in tps:
                if tp in start:
                    consumer.seek(tp, start[tp])
                else:
                    consumer.seek_to_beginning(tp)
            todo = {tp for tp, r in results.items() if not r.complete}
            for tp in set(tps) - todo:
                consumer.pause(tp)
            while todo and time.monotonic() < deadline:
                batch = consumer.poll(timeout_ms=min(500, max(1, int((deadline - time.monotonic()) * 1000))))
                with immediate(conn):
                    for tp, records in batch.items():
                        r = results[tp]
                        for record in records:
                            try:
                                transitions = decode_all(record.key, record.value)
                            except DecodeError as exc:
                                transitions = []
                                r.skipped += 1
                                logger.warning("ledger changelog %s/%d@%d skipped: %s", tp.topic, tp.partition,
                                               record.offset, exc)
                            for t in transitions:
                                apply(conn, t)
                            r.applied += len(transitions)
                    for tp in list(todo):
                        r = results[tp]
                        r.position = consumer.position(tp)
                        self._write_checkpoint(conn, tp, r.position)
                        if r.complete:
                            todo.discard(tp)
                            consumer.pause(tp)
            return [results[tp] for tp in tps]
        except KafkaError as exc:
            logger.error("ledger changelog restore of %s failed: %s: %s", ", ".join(map(str, tps)),
                         type(exc).__name__, exc)
            return [RestoreResult(tp, None, 1, 0) for tp in tps]
        except sqlite3.Error as exc:
            raise ledger_error("restoring the changelog", exc) from exc
        finally:
            conn.close()
            if self._consumer is not None:
                self._consumer.unsubscribe()

    @staticmethod
    def _read_checkpoints(conn: sqlite3.Connection, tps: list[TopicPartition]) -> Iterable[tuple[TopicPartition,
                                                                                                   int]]:
        for tp in tps:
            row = conn.execute(f"SELECT next_offset FROM {CHECKPOINTS} WHERE topic = ? AND partition = ?",
                               (tp.topic, tp.partition)).fetchone()
            if row is not None:
                yield tp, int(row[0])

    @staticmethod
    def _write_checkpoint(conn: sqlite3.Connection, tp: TopicPartition, offset: int) -> None:
        conn.execute(f"INSERT INTO {CHECKPOINTS} (topic, partition, next_offset, updated_at) VALUES (?, ?, ?, ?) "
                     "ON CONFLICT(topic, partition) DO UPDATE SET next_offset = excluded.next_offset, "
                     "updated_at = excluded.updated_at", (tp.topic, tp.partition, offset, time.time()))

    def close(self) -> None:
        with self._lock:              # after a warm() still building it
            consumer, self._consumer = self._consumer, None
        if consumer is not None:
            try:
                consumer.close(autocommit=False)
            except Exception as exc:  # closing on the way out: nothing to do about it
                logger.debug("closing the changelog restore consumer: %s", exc)


def records_of(transitions: Iterable[Transition]) -> list[tuple[bytes, bytes]]:
    """(key, value) pairs of transitions, for tools and tests that write a changelog by hand."""
    return [(encode_key(t.key, t.task), encode_value(t)) for t in transitions]
