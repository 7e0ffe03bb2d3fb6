"""A fix for kafka-python 3.0's group join when the consumer polls with ``timeout_ms=0``.

The cause of the rebalance storm seen when a worker joins a busy one
(kafka-python 3.0.12, ``kafka/coordinator/base.py``, ``join_group_async``):
the JoinGroup -> SyncGroup round trip runs as a task on the client's IO
thread, and ``poll()`` waits for it at most ``timeout_ms``. When the wait
times out the task is kept, so that the next poll awaits it again instead of
sending a second JoinGroup. But the next poll only reuses the task while it
is *not done*::

    if self._join_task is None or self._join_task.is_done:
        ...
        self._join_task = self._manager.call_soon(self._do_join_and_sync_async)

so a round trip that *finished* between two polls is thrown away, its
assignment never applied, and a fresh JoinGroup is sent with the new
generation's member id. The broker takes that as the leader rejoining a
stable group ("Leader ... re-joining group during Stable"), starts another
generation, every other member has to rejoin, and the owner's commits are
rejected with ``RebalanceInProgressError`` meanwhile. A worker that is busy
polls with ``timeout_ms=0`` (it must not wait while it has results to
collect), so its round trip always finishes between two polls: the group
only settles when a poll happens to be waiting at the very moment the
SyncGroup response arrives. With the eager protocol the owner gives up all
its partitions before joining, becomes idle and polls with a long timeout,
which hid the bug; the cooperative protocol keeps partitions (and the
worker busy) across the join, which exposes it every time.

The fix: before each join attempt, a finished task is handed to
``join_group_async`` wrapped so that it looks pending; the method then
awaits it (which returns at once) and completes the join with its result,
exactly as if the poll had been waiting: the member becomes stable and the
assignment is applied. A finished task that failed is collected the same
way, and the method's own error handling retries.

A second fault of the same cache: ``join_group_async`` only looks at the
kept task while ``need_rejoin()`` is true. When a rejoin was started by a
metadata change (a subscribed topic that appeared or grew: the leader's
``_assignment_snapshot`` differs from the metadata) and the poll returns
before the round trip ends, the leader's own ``_perform_assignment``, run
inside that round trip, sets the snapshot equal to the metadata again. The
next poll then sees no need to rejoin, never awaits the kept task, and its
SyncGroup answer is dropped: the member sits in the new generation with its
old (often empty) assignment, heartbeating successfully, for good. Seen as a
consumer that never got the partitions of a topic created after it
subscribed. So while a round trip is kept, a rejoin counts as needed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator
from typing import Any

from kafka import KafkaConsumer

logger = logging.getLogger(__name__)

__all__ = ["collect_finished_joins"]


class _FinishedJoin:
    """A finished JoinGroup/SyncGroup task presented as still pending.

    ``join_group_async`` tests ``is_done`` to decide whether to start a new
    round trip, then waits through ``add_callback``/``add_errback`` (with a
    timeout) or ``await`` (without one); a done kafka Future runs callbacks
    added to it at once, so the wait returns the finished result immediately.
    """

    is_done = False

    def __init__(self, task: Any) -> None:
        self.task = task

    def add_callback(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> _FinishedJoin:
        self.task.add_callback(fn, *args, **kwargs)
        return self

    def add_errback(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> _FinishedJoin:
        self.task.add_errback(fn, *args, **kwargs)
        return self

    def __await__(self) -> Generator[Any, None, Any]:
        return self.task.__await__()


def collect_finished_joins(consumer: KafkaConsumer) -> bool:
    """Make ``consumer`` apply a join round trip that finished between two polls.

    Returns False (and changes nothing) when the installed kafka-python does
    not have the structure this fix relies on, so a client upgrade that
    changes it falls back to the client's own behaviour instead of failing.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    join = getattr(coordinator, "join_group_async", None)
    need_rejoin = getattr(coordinator, "need_rejoin", None)
    if coordinator is None or join is None or need_rejoin is None or not hasattr(coordinator, "_join_task"):
        logger.warning("kafka-python's group coordinator has no _join_task: join fix not installed")
        return False

    async def join_group_async(timeout_ms: int | None = None) -> Any:
        task = coordinator._join_task
        if task is not None and not isinstance(task, _FinishedJoin) and task.is_done:
            logger.debug("collecting a group join that finished between two polls (failed: %s)",
                         task.exception is not None)
            coordinator._join_task = _FinishedJoin(task)
        return await join(timeout_ms=timeout_ms)

    def pending_join_or_need_rejoin() -> bool:
        return coordinator._join_task is not None or need_rejoin()

    coordinator.join_group_async = join_group_async
    coordinator.need_rejoin = pending_join_or_need_rejoin
    return True
