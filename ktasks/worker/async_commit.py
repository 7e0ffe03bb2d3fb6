"""Periodic offset commits that never stop the worker's loop.

A synchronous ``KafkaConsumer.commit()`` waits for the group coordinator; while a
broker is away (8 to 13 s when the coordinator's broker dies) kafka-python retries
inside the call and the worker dispatches nothing. :class:`AsyncCommitter` sends
the periodic commit with ``commit_async`` instead and hands its outcome back to
the loop later, so a broker stall delays commits and nothing else.

At most one commit is in flight: a second one could overtake the first on a new
coordinator and be overwritten by the older offsets. A commit that has not
answered after ``timeout_s`` is given up (reported as a retriable
``KafkaTimeoutError``), so a lost callback never blocks commits for good.
Commits that must be done before going on (on revoke and at shutdown) stay
synchronous; they are the caller's business.

kafka-python calls the callback from whichever thread next polls the consumer
(the loop, or the rebalance helper): the callback only records the outcome, under
this object's lock, and the loop applies it with :meth:`AsyncCommitter.poll`.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..kafka.errors import KafkaTimeoutError

logger = logging.getLogger(__name__)

__all__ = ["AsyncCommitter", "CommitOutcome"]


@dataclass(frozen=True)
class CommitOutcome:
    """How one asynchronous commit ended: ``error`` is None when the broker accepted it."""

    offsets: Mapping[Any, Any]
    context: Any
    error: BaseException | None
    elapsed_s: float


class AsyncCommitter:
    """Sends one ``commit_async`` at a time and keeps its outcome for the loop to collect.

    Args:
        timeout_s: how long a commit may stay unanswered before it is given up.
        clock: monotonic clock (tests pass their own).
    """

    def __init__(self, timeout_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._timeout_s = timeout_s
        self._clock = clock
        self._lock = threading.Lock()
        self._seq = 0
        self._pending: tuple[int, Mapping[Any, Any], Any, float] | None = None  # seq, offsets, context, sent
        self._outcome: CommitOutcome | None = None

    @property
    def in_flight(self) -> bool:
        """True while a commit was sent and its outcome not yet collected."""
        with self._lock:
            return self._pending is not None or self._outcome is not None

    def send(self, consumer: Any, offsets: Mapping[Any, Any], context: Any = None) -> bool:
        """Send ``offsets`` with ``consumer.commit_async``; False (nothing sent) while another commit is in flight.

        ``context`` comes back in the :class:`CommitOutcome` (the worker passes the
        partition states the offsets were read from). An error raised by the send
        itself is reported through :meth:`poll` like any other failure.
        """
        with self._lock:
            if self._pending is not None or self._outcome is not None:
                return False
            self._seq += 1
            seq = self._seq
            self._pending = (seq, offsets, context, self._clock())
        try:
            consumer.commit_async(offsets, callback=lambda _offsets, res: self._done(seq, res))
        except Exception as exc:   # noqa: BLE001 - any failure to send is a failed commit, reported via poll
            self._done(seq, exc)
        return True

    def _done(self, seq: int, result: Any) -> None:
        with self._lock:
            if self._pending is None or self._pending[0] != seq:
                # Given up at its deadline already; its outcome was reported then.
                logger.debug("late answer to an abandoned offset commit: %r", result)
                return
            _, offsets, context, sent = self._pending
            self._pending = None
            error = result if isinstance(result, BaseException) else None
            self._outcome = CommitOutcome(offsets, context, error, self._clock() - sent)

    def poll(self) -> CommitOutcome | None:
        """The outcome of the last commit once it is known (returned once), else None."""
        with self._lock:
            if self._outcome is None and self._pending is not None:
                seq, offsets, context, sent = self._pending
                waited = self._clock() - sent
                if waited >= self._timeout_s:
                    self._pending = None
                    error = KafkaTimeoutError(f"offset commit not answered after {waited:.1f}s")
                    self._outcome = CommitOutcome(offsets, context, error, waited)
            outcome, self._outcome = self._outcome, None
            return outcome
