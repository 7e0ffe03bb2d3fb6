"""The ledger that follows the partition: a changelog topic behind each host's SQLite ledger.

Like a Kafka Streams state store backed by a compacted changelog: the worker
parent writes every ledger transition a redelivery must see (a success, a
failure, a poison mark, the count of unfinished starts) to the changelog
topic of the record's task topic, into the partition with the record's
partition number, keyed by the ledger entry. A worker newly assigned a
partition restores that changelog partition into its local ledger before it
dispatches any record of it (:mod:`ktasks.ledger_restore`), so a record that
finished on another host is skipped here.

The parent writes from the outcome each child already reports, pipelined, and
the finishes of one round of results as one record per changelog partition
(:func:`ktasks.ledger_restore.encode_batch`; one ``send`` per task was a
quarter of the parent's work on quick tasks): a finished record's offset is
committed only once its changelog record is acknowledged (:meth:`LedgerChangelog.commit_offsets` lowers the commit to the
first unacknowledged record), but nothing waits per task. A start is written
only for a task still running one commit interval or so after its dispatch
(quick tasks finish first and write only their finish), with the count the
child recorded in the local ledger. See docs/ledger.md#the-changelog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from .errors import BrokerUnavailable, TopicError
from .kafka import OffsetAndMetadata, TopicPartition
from .kafka.errors import KafkaTimeoutError
from .ledger import FAILED, POISONED, STARTED, SUCCEEDED, Ledger
from .ledger_restore import Restorer, Transition, encode_batch, encode_key, encode_value
from .middleware import Dispatched, Middleware, TaskEvent
from .worker import offsetmap

if TYPE_CHECKING:
    from .app import App
    from .settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["LedgerChangelog", "changelog_topic", "changelog_configs", "STARTS_AFTER_S"]

#: A task still running this long after its dispatch gets its start written to the changelog.
STARTS_AFTER_S = 0.25
# How often the backpressure check counts the sends still waiting (a scan of the dict).
SWEEP_S = 0.02
#: Most finishes written as one record, and their most estimated bytes (a record stays far under
#: the broker's ``message.max.bytes``, 1 MB by default).
BATCH_MAX_ENTRIES = 500
BATCH_MAX_BYTES = 256 * 1024
# Estimated bytes of a batch entry besides its key and task: state, times, counts, host, pids.
_ENTRY_OVERHEAD = 96
#: A child lost with the task (killed, or past its hard time limit): the local ledger keeps
#: the start, which counts towards max_starts; no finish is written.
_LOST = ("worker-lost", "time-limit")


def changelog_topic(settings: Settings, task_topic: str) -> str:
    """The changelog topic of a task topic: its name followed by ``ledger_changelog_suffix``."""
    return task_topic + settings.ledger_changelog_suffix


def changelog_configs(settings: Settings) -> dict[str, str]:
    """Topic configs of a changelog: compacted, and entries older than the ledger's retention deleted."""
    return {**settings.topic_config(), "cleanup.policy": "compact,delete",
            "retention.ms": str(settings.ledger_retention_s * 1000)}


class _Send:
    __slots__ = ("future", "topic", "partition", "key", "value")

    def __init__(self, future: Any, topic: str, partition: int, key: bytes, value: bytes) -> None:
        self.future, self.topic, self.partition, self.key, self.value = future, topic, partition, key, value


class LedgerChangelog(Middleware):
    """Writes ledger transitions to the changelog and restores them on assignment (worker parent only)."""

    def __init__(self, app: App, settings: Settings, ledger_path: str, changelogs: dict[str, str],
                 partitions: dict[str, int]) -> None:
        self.app = app
        self.settings = settings
        self.ledger_path = ledger_path
        self._changelog_of = changelogs          # task or retry topic -> changelog topic
        self._partitions = partitions            # changelog topic -> its partition count
        self._restorer = Restorer(settings, ledger_path, app.client_id)
        # Finished records whose changelog record is not acknowledged yet: record tp -> offset -> send
        # (the records of one batch share its send).
        self._unacked: dict[TopicPartition, dict[int, _Send]] = {}
        # A send this pass (one commit, one round of results) timed out waiting for the broker:
        # the rest of the pass sends nothing, or each send would block send_timeout_ms in turn.
        self._unreachable = False
        # Finishes gathered this round, per changelog partition: (record tp, offset, transition).
        self._batches: dict[tuple[str, int], list[tuple[TopicPartition, int, Transition]]] = {}
        self._batch_bytes: dict[tuple[str, int], int] = {}
        self._batched = 0
        # Dispatched and not finished: (topic, partition, offset) -> (task, key, dispatched at).
        self._running: dict[tuple[str, int, int], tuple[str, str, float]] = {}
        self._ledger: Ledger | None = None       # the parent's own handle, on the loop thread
        # Backpressure: finished records waiting on the broker, counted now and then (sweep).
        self._waiting = 0
        self._swept_at = 0.0
        self._held_since: float | None = None
        self.restored = 0                        # transitions applied by restores, for logs and tests
        # --transactional: a success's transition rides in the transaction that commits its offset, so
        # no host restores a success whose records were aborted.
        self.transactions: Any = None
        self.sent = 0

    @classmethod
    def install(cls, worker: Any, ledger_path: str) -> LedgerChangelog:
        """Create (or check) the changelog topics of the worker's task topics and add the middleware."""
        app, settings = worker.app, worker.settings
        changelogs: dict[str, str] = {}
        partitions: dict[str, int] = {}
        for topic in worker.topics:
            name = changelog_topic(settings, topic)
            count = app.topics.partitions_of(topic)
            if count is None:
                raise TopicError(f"task topic {topic!r} does not exist")
            if app.topics.partitions_of(name) is None and settings.auto_create_topics:
                app.topics.ensure([name], partitions=count, configs=changelog_configs(settings))
            have = app.topics.partitions_of(name)
            if have is None:
                raise TopicError(f"ledger changelog topic {name!r} of {topic!r} does not exist and "
                                 "auto_create_topics is off: create it (ktasks topics create) or set "
                                 "ledger_changelog=False")
            if have != count:
                logger.warning("ledger changelog %s has %d partitions, task topic %s has %d: partition p's "
                               "transitions go to its partition p modulo %d", name, have, topic, count, have)
            partitions[name] = have
            changelogs[topic] = name
            for retry in app.retry_topics(topic):
                changelogs[retry] = name
        for item in list(app.middleware):
            if isinstance(item, cls):
                app.middleware.remove(item)      # a worker run again in the same process
        self = cls(app, settings, ledger_path, changelogs, partitions)
        self.transactions = getattr(worker, "transactions", None)
        app.add_middleware(self)
        self._restorer.warm()
        logger.info("ledger changelog: %s", ", ".join(sorted(set(changelogs.values()))))
        return self

    # -- where a record's transitions go ---------------------------------------------
    def _target(self, topic: str, partition: int) -> tuple[str, int] | None:
        name = self._changelog_of.get(topic)
        if name is None:
            return None
        return name, partition % self._partitions[name]

    def _send(self, topic: str, partition: int, t: Transition) -> _Send | None:
        target = self._target(topic, partition)
        if target is None:
            return None
        key, value = encode_key(t.key, t.task), encode_value(t)
        send = _Send(None, target[0], target[1], key, value)
        self._try(send)
        self.sent += 1
        return send

    def _try(self, send: _Send) -> None:
        if self._unreachable:
            send.future = None      # tried again in the next pass
            return
        try:
            # The raw producer: a changelog record needs none of the enqueue tracking, and
            # its failure is handled here (sent again before the commit that needs it).
            send.future = self.app.producer.get().send(send.topic, value=send.value, key=send.key,
                                                       partition=send.partition)
        except Exception as exc:
            send.future = None
            self._unreachable = isinstance(exc, (KafkaTimeoutError, BrokerUnavailable))
            logger.warning("ledger changelog send to %s/%d failed (%s: %s); trying again before the next commit",
                           send.topic, send.partition, type(exc).__name__, exc)

    # -- the worker's hooks ---------------------------------------------------------
    def tasks_dispatched(self, tasks: list[Dispatched]) -> None:
        now = time.monotonic()
        for d in tasks:
            self._running[(d.topic, d.partition, d.offset)] = (d.task, d.ledger_key, now)

    def task_finished(self, event: TaskEvent) -> None:
        self._running.pop((event.topic, event.partition, event.offset), None)
        if event.ledger_key is None:
            return
        outcome = event.outcome
        if outcome == "succeeded":
            state = SUCCEEDED
        elif outcome == "dead_lettered" and event.reason == "poison":
            state = POISONED
        elif outcome in ("retried", "failed", "expired") and event.reason not in _LOST:
            state = FAILED
        else:
            return      # skipped (already recorded when it ran), never ran, or lost with its child
        target = self._target(event.topic, event.partition)
        if target is None:
            return
        t = Transition(event.ledger_key, event.task, state, time.time())
        if state == SUCCEEDED and self.transactions is not None:
            self.transactions.add([[target[0], encode_value(t), encode_key(t.key, t.task), [], target[1]]])
            self.sent += 1
            return
        batch = self._batches.setdefault(target, [])
        batch.append((TopicPartition(event.topic, event.partition), event.offset, t))
        size = self._batch_bytes.get(target, 0) + len(t.key) + len(t.task) + _ENTRY_OVERHEAD
        self._batch_bytes[target] = size
        self._batched += 1
        if len(batch) >= BATCH_MAX_ENTRIES or size >= BATCH_MAX_BYTES:
            self._write_batch(target)

    def results_collected(self) -> None:
        self._unreachable = False
        self._write_batches()

    def _write_batches(self) -> None:
        for target in list(self._batches):
            self._write_batch(target)

    def _write_batch(self, target: tuple[str, int]) -> None:
        """One record holding the gathered finishes for ``target``; each finished record waits on it."""
        items = self._batches.pop(target, None)
        self._batch_bytes.pop(target, None)
        if not items:
            return
        self._batched -= len(items)
        key, value = encode_batch(t for _, _, t in items)
        send = _Send(None, target[0], target[1], key, value)
        self._try(send)
        self.sent += 1
        for tp, offset, _ in items:
            self._unacked.setdefault(tp, {})[offset] = send
        self._waiting += len(items)

    def dispatch_room(self) -> int | None:
        """How many more tasks may start: ``ledger_changelog_max_unacked`` less those at risk.

        A task running, or finished with its changelog record not yet acknowledged,
        runs again on the next owner after a kill. With the broker unreachable the
        producer buffers and the children would go on finishing tasks, each one
        more to run again: this keeps their number under the limit. Once at the
        limit, the worker starts nothing until it is under half of it, so a slow
        broker does not make it flap.
        """
        limit = self.settings.ledger_changelog_max_unacked
        if limit <= 0:
            return None
        now = time.monotonic()
        if now - self._swept_at >= SWEEP_S:
            self._swept_at = now
            self._waiting = self._sweep()
        used = self._waiting + self._batched + len(self._running)
        if self._held_since is not None:
            if used >= max(1, limit // 2):
                return 0
            self._end_hold(now)
        room = limit - used
        if room <= 0:
            self._held_since = now
            logger.warning("ledger changelog: %d task(s) running or finished without an acknowledged changelog "
                           "record (ledger_changelog_max_unacked=%d): starting no new task until fewer than %d",
                           used, limit, max(1, limit // 2))
            return 0
        return room

    def _end_hold(self, now: float) -> None:
        logger.warning("ledger changelog: records acknowledged again; starting tasks after a hold of %.1f s",
                       now - self._held_since if self._held_since is not None else 0.0)
        self._held_since = None

    def _sweep(self) -> int:
        """Forget acknowledged changelog sends; return how many are left (waiting, or failed and to resend)."""
        left = 0
        for tp in list(self._unacked):
            sends = self._unacked.get(tp)
            if sends is None:
                continue
            for offset, send in list(sends.items()):
                f = send.future
                if f is not None and f.is_done and f.succeeded():
                    sends.pop(offset, None)
                else:
                    left += 1
        return left

    def commit_offsets(self, offsets: dict[TopicPartition, OffsetAndMetadata], final: bool
                       ) -> dict[TopicPartition, OffsetAndMetadata]:
        self._unreachable = False
        self._write_batches()
        if final:
            if self._unacked:
                # Releasing partitions or stopping: wait (bounded) for what is on its way.
                self._resend_failed()
                try:
                    self.app.producer.flush(self.settings.send_timeout_ms / 1000.0)
                except Exception as exc:
                    logger.warning("ledger changelog: flush before the final commit failed: %s", exc)
        else:
            self._write_starts()
        out = dict(offsets)
        for tp in list(self._unacked):
            first = self._first_unacked(tp)
            om = out.get(tp)
            if first is None or om is None or first >= om.offset:
                continue
            # Only records whose changelog record is acknowledged count as finished: commit
            # up to the first that is not, with what finished above it in the offset map.
            above = set(offsetmap.decode(om.metadata, om.offset)) | set(range(first + 1, om.offset))
            above -= set(self._unacked.get(tp, ()))
            out[tp] = OffsetAndMetadata(first, offsetmap.encode(first, above), -1)
        return out

    def _first_unacked(self, tp: TopicPartition) -> int | None:
        # The revoke callback's thread may drop a partition meanwhile (partitions_revoked).
        sends = self._unacked.get(tp)
        if sends is None:
            return None
        first: int | None = None
        for offset, send in list(sends.items()):
            f = send.future
            if f is not None and f.is_done and f.succeeded():
                del sends[offset]
                continue
            if f is None or (f.is_done and not f.succeeded()):
                if f is not None:
                    logger.warning("ledger changelog record for %s/%d@%d failed (%s); sending it again",
                                   tp.topic, tp.partition, offset, f.exception)
                self._try(send)
            if first is None or offset < first:
                first = offset
        if not sends:
            self._unacked.pop(tp, None)
        return first

    def _resend_failed(self) -> None:
        for sends in self._unacked.values():
            for send in sends.values():
                if send.future is None or (send.future.is_done and not send.future.succeeded()):
                    self._try(send)

    def _write_starts(self) -> None:
        """A start record for every task still running a while after its dispatch, once each."""
        if not self._running:
            return
        cutoff = time.monotonic() - STARTS_AFTER_S
        due = [(k, v) for k, v in self._running.items() if v[2] <= cutoff]
        if not due:
            return
        if self._ledger is None:
            self._ledger = Ledger(self.ledger_path)
        for (topic, partition, offset), (task, key, _) in due:
            # Written once: the entry is kept (as never due again) until the task finishes.
            self._running[(topic, partition, offset)] = (task, key, float("inf"))
            entry = self._ledger.get(key, task=task)
            if entry is None or entry.state != STARTED:
                continue    # queued behind others in a batch, or already finished
            self._send(topic, partition, Transition(key, task, STARTED, entry.started_at or time.time(),
                                                    entry.starts, entry.attempt, entry.host, entry.pid,
                                                    entry.pid_start))

    def before_partitions_assigned(self, partitions: list[TopicPartition]) -> None:
        targets = {t for tp in partitions if (t := self._target(tp.topic, tp.partition)) is not None}
        if not targets:
            return
        timeout_s = self.settings.ledger_restore_timeout_ms / 1000.0
        started = time.monotonic()
        results = self._restorer.restore([TopicPartition(t, p) for t, p in targets], timeout_s)
        took = time.monotonic() - started
        for r in results:
            self.restored += r.applied
            if not r.complete:
                logger.error("ledger changelog %s/%d: restored to offset %d of %d within %.1fs "
                             "(ledger_restore_timeout_ms); running its partition's records anyway: tasks finished "
                             "elsewhere and not restored may run again", r.tp.topic, r.tp.partition, r.position,
                             r.end, timeout_s)
            else:
                logger.info("ledger changelog %s/%d restored: %d transition(s) from offset %s to %d in %.2fs",
                            r.tp.topic, r.tp.partition, r.applied, r.start if r.start is not None else "0",
                            r.end, took)

    def partitions_revoked(self, partitions: list[TopicPartition]) -> None:
        gone = set(partitions)
        for tp in gone:
            self._unacked.pop(tp, None)
        for target, items in list(self._batches.items()):
            kept = [item for item in items if item[0] not in gone]
            self._batched -= len(items) - len(kept)
            if kept:
                self._batches[target] = kept
            else:
                self._batches.pop(target)
                self._batch_bytes.pop(target, None)
        self._running = {k: v for k, v in self._running.items() if TopicPartition(k[0], k[1]) not in gone}

    def worker_stopped(self, worker: Any) -> None:
        self._restorer.close()
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def unacked(self) -> int:
        """Finished records whose changelog record is not written or not acknowledged yet."""
        return sum(len(s) for s in self._unacked.values()) + self._batched


def changelog_topics(settings: Settings, task_topics: Iterable[str]) -> list[str]:
    """The changelog topic of each task topic, in order."""
    return [changelog_topic(settings, t) for t in task_topics]
