"""Which offset of a partition is safe to commit.

Records finish out of order (children run them in parallel). The committable
offset of a partition is the one just past the highest record below which
every record has finished: committing the consumer's position instead would
mark records still in flight as done, and a crash would lose them.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

from . import offsetmap

__all__ = ["OffsetTracker"]


class OffsetTracker:
    """Completion state of one partition's records, in arrival (offset) order.

    ``add`` is called for every record taken from a poll, in offset order;
    ``done`` when its task finished (or was skipped, retried or dead-lettered).
    ``committable`` is then O(1) amortized: finished records at the head are
    popped as they finish.
    """

    __slots__ = ("_pending", "_done", "_next", "_committed", "_earlier", "_committed_map")

    def __init__(self, committed: int | None = None, finished_earlier: Iterable[int] = ()) -> None:
        self._pending: deque[int] = deque()   # offsets taken and not yet below the watermark
        self._done: set[int] = set()          # finished offsets still behind an unfinished one
        self._next: int | None = committed    # offset just past the last record taken
        self._committed = committed           # last offset committed to Kafka
        # Finished above the committed offset by a previous owner (its commit's offset map).
        self._earlier = frozenset(o for o in finished_earlier if committed is not None and o > committed)
        self._committed_map = ""              # offset map committed with _committed

    def finished_earlier(self, offset: int) -> bool:
        """True if a previous owner finished ``offset`` (listed in the commit's offset map)."""
        return offset in self._earlier

    def finished_above(self) -> set[int]:
        """Finished offsets above the committable one: the offset map to commit with it."""
        c = self.committable
        return self._done | {o for o in self._earlier if c is None or o > c}

    def offset_map(self) -> str:
        """The commit metadata for :attr:`committable`: what finished above it (see ``offsetmap``)."""
        c = self.committable
        return offsetmap.encode(c, self.finished_above()) if c is not None else ""

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
        # Also when only the offset map grew: a slow record holds the offset while the
        # records after it finish, and the next owner should know about them.
        c = self.committable
        return c is not None and (c != self._committed or self.offset_map() != self._committed_map)

    def mark_committed(self, offset: int, offset_map: str = "") -> None:
        self._committed = offset
        self._committed_map = offset_map
