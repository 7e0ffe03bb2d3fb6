"""Which offset of a partition is safe to commit.

Records finish out of order (children run them in parallel). The committable
offset of a partition is the one just past the highest record below which
every record has finished: committing the consumer's position instead would
mark records still in flight as done, and a crash would lose them.
"""

from __future__ import annotations

from collections import deque

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Completion state of one partition's records, in arrival (offset) order.

    ``add`` is called for every record taken from a poll, in offset order;
    ``done`` when its task finished (or was skipped, retried or dead-lettered).
    ``committable`` is then O(1) amortized: finished records at the head are
    popped as they finish.
    """

    __slots__ = ("_pending", "_done", "_next", "_committed")

    def __init__(self, committed: int | None = None) -> None:
        self._pending: deque[int] = deque()   # offsets taken and not yet below the watermark
        self._done: set[int] = set()          # finished offsets still behind an unfinished one
        self._next: int | None = committed    # offset just past the last record taken
        self._committed = committed           # last offset committed to Kafka

    def add(self, offset: int) -> None:
        if self._next is not None and offset < self._next:
            # A seek back (retry hold, rebalance) delivers records again; drop state at and after them.
            self.rewind(offset)
        self._pending.append(offset)
        self._next = offset + 1

    def rewind(self, offset: int) -> None:
        """Forget every record at or after ``offset`` (they will be delivered again)."""
        while self._pending and self._pending[-1] >= offset:
            self._done.discard(self._pending.pop())
        self._next = offset

    def done(self, offset: int) -> None:
        if self._pending and self._pending[0] == offset:
            self._pending.popleft()
            while self._pending and self._pending[0] in self._done:
                self._done.remove(self._pending.popleft())
        else:
            self._done.add(offset)

    @property
    def committable(self) -> int | None:
        """Offset to commit: the first unfinished record, or just past the last one taken."""
        if self._pending:
            return self._pending[0]
        return self._next

    @property
    def in_flight(self) -> int:
        """Records taken and not yet committable (running, queued, or finished behind one that is not)."""
        return len(self._pending)

    @property
    def committed(self) -> int | None:
        return self._committed

    def needs_commit(self) -> bool:
        c = self.committable
        return c is not None and c != self._committed

    def mark_committed(self, offset: int) -> None:
        self._committed = offset
