"""The group's rebalance callbacks: partitions assigned, revoked and lost.

They run on kafka-python's rebalance helper thread (see :mod:`.membership`)
while the loop may be inside ``poll()`` for that very rebalance, and share
the loop's state under the worker's lock. A revoke lets the partition's
running tasks finish (up to ``revoke_timeout_ms``), commits what finished,
then releases it; a loss drops it at once (its new owner may already run it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from ..kafka import TopicPartition
from .committer import UNKNOWN, Committer
from .dispatch import Dispatcher
from .outbox import Outbox
from .partitions import Partitions

logger = logging.getLogger(__name__)

__all__ = ["Rebalance"]


class Rebalance:
    """The listener's three callbacks (``assigned``, ``revoked``, ``lost``)."""

    def __init__(self, app: Any, settings: Any, lock: threading.Lock, partitions: Partitions,
                 committer: Committer, dispatcher: Dispatcher, outbox: Outbox, cold: Callable[[], bool],
                 stopping: Callable[[], bool] = lambda: False) -> None:
        self.app = app
        self.settings = settings
        self.lock = lock
        self.partitions = partitions
        self.committer = committer
        self.dispatcher = dispatcher
        self.outbox = outbox
        self._cold = cold
        self._stopping = stopping
        #: Finished, uncommitted records of partitions given up while stopping (told in the exit status).
        self.dropped_uncommitted = 0

    def assigned(self, tps: list[TopicPartition]) -> None:
        # Start every newly assigned partition from its committed offset, explicitly. After an
        # eager revoke-and-assign of the same partition, kafka-python 3.0.12 keeps the position
        # the consumer had fetched up to, so records we had taken but not finished (dropped on
        # revoke, uncommitted) would be skipped until a restart.
        # Before any record of them is read: state they need is restored (the ledger changelog).
        self.app.middleware.before("before_partitions_assigned", list(tps))
        positions = {tp: self.committer.committed(tp) for tp in tps}
        with self.lock:
            for tp in tps:
                current = self.partitions.get(tp)
                if positions[tp] is UNKNOWN:
                    continue          # stopping before we knew where to start: not taken
                if current is None or current.revoking:
                    self.committer.start_at(tp, positions[tp])
            self.partitions.sync_paused()
        self.app.middleware.after("partitions_assigned", list(tps))

    def revoked(self, tps: list[TopicPartition]) -> None:
        with self.lock:
            mine = [tp for tp in tps if tp in self.partitions]
            if not mine:
                return
            for tp in mine:
                ps = self.partitions.get(tp)
                assert ps is not None
                ps.revoking = True
            # Stop dispatching: queued records of these partitions are dropped (uncommitted,
            # the next owner gets them); running ones may finish within the deadline.
            self.dispatcher.forget(set(mine))
        timeout_s = self.settings.revoke_timeout_ms / 1000.0
        deadline = time.monotonic() + timeout_s
        # Wait without holding the lock: the loop goes on dispatching other partitions and
        # checking time limits meanwhile. The loop may itself be inside poll() for this very
        # rebalance, so each turn here also collects results and pumps publishes.
        while not self._cold():
            with self.lock:
                self.dispatcher.collect(0.0)
                self.outbox.pump()
                busy = self.dispatcher.running_for(mine)
                pending = self.outbox.count_for(mine)
            if not busy and not pending:
                break
            if time.monotonic() >= deadline:
                logger.warning("revoke: tasks of %s still running after %.1fs; releasing anyway (the ledger "
                               "keeps their next owner from running them twice)",
                               ", ".join(map(str, mine)), timeout_s)
                break
            if pending:
                self.outbox.flush_quietly(0.05)
            else:
                time.sleep(0.02)
        # Commit before giving the partitions up, retrying retriable errors until the deadline.
        while True:
            with self.lock:
                if self.committer.maybe_commit(force=True, only=mine):
                    break
            if time.monotonic() >= deadline:
                break
            time.sleep(0.1)
        with self.lock:
            for tp in mine:
                ps = self.partitions.get(tp)
                if ps is not None:
                    logger.info("released %s/%d at offset %s", tp.topic, tp.partition, ps.tracker.committed)
            self._drop(mine)
        self.app.middleware.after("partitions_revoked", mine)

    def lost(self, tps: list[TopicPartition]) -> None:
        with self.lock:
            mine = [tp for tp in tps if tp in self.partitions]
            self._drop(mine)
        self.app.middleware.after("partitions_revoked", mine)

    def _drop(self, mine: list[TopicPartition]) -> None:
        if self._stopping():
            self.dropped_uncommitted += sum(len(ps.finished) for tp in mine if (ps := self.partitions.get(tp)))
        self.partitions.drop(mine)
