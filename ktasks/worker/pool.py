"""The prefork pool: starting, feeding, watching and replacing child processes.

Children are *spawned*, not forked: the parent runs Kafka client threads, and
forking a threaded process can leave locks held in the child forever. Each
child imports the app afresh from the ``module:attr`` spec the worker was
started with.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

from ..errors import WorkerError
from ..message import pack, unpack
from .child import child_main
from .protocol import READY, RESULTS, STOP

logger = logging.getLogger(__name__)

__all__ = ["Pool", "ChildProc", "ChildEvent"]

_ctx = multiprocessing.get_context("spawn")


@dataclass(eq=False)
class ChildProc:
    """The parent's view of one child."""

    index: int
    process: Any
    conn: Connection
    state: Any                      # shared doubles: [seq of the job claimed last, its start (monotonic) or 0
    #                                 while none runs, seq taken back] (see ktasks.worker.protocol)
    outstanding: dict[int, Any] = field(default_factory=dict)   # seq -> job, in dispatch order
    claim_lock: Any = None          # shared with the child: claiming a job against taking it back
    ahead: int | None = None        # seq of the job handed to it while it ran another, until that starts
    tasks_done: int = 0
    ready: bool = False
    retiring: bool = False
    kill_reason: str | None = None
    capacity: int = 1               # jobs in flight at once: 1, or async_concurrency for an event-loop child

    @property
    def idle(self) -> bool:
        """Ready for more work: nothing outstanding, or (event-loop child) a free slot."""
        return self.ready and len(self.outstanding) < self.capacity and not self.retiring

    @property
    def pid(self) -> int | None:
        return self.process.pid

    def running(self) -> tuple[int, float] | None:
        """Seq and start time of the job the child is running now, if any."""
        start = self.state[1]
        if start <= 0.0:
            return None
        return int(self.state[0]), start

    def take_back(self, seq: int, timeout_s: float = 0.05) -> bool:
        """Take job ``seq`` back before the child starts it; False if it has started (or the lock is stuck).

        The child claims a job under the same lock before it runs it, so exactly
        one side gets it. A child killed while holding the lock never releases
        it: the timeout keeps the parent's loop going (that child's death then
        hands its jobs back anyway).
        """
        if self.claim_lock is None or not self.claim_lock.acquire(timeout=timeout_s):
            return False
        try:
            if int(self.state[0]) == seq:
                return False
            self.state[2] = float(seq)
            return True
        finally:
            self.claim_lock.release()


@dataclass
class ChildEvent:
    child: ChildProc
    kind: str                       # "results" or "died"
    results: list[list[Any]] = field(default_factory=list)
    exitcode: int | None = None


class Pool:
    """N spawned children, each with its own pipe."""

    def __init__(self, app_spec: str, size: int, *, loglevel: str = "INFO", log_format: str = "text",
                 faults_spec: str | None = None, overrides: dict[str, Any] | None = None,
                 capacity: int = 1) -> None:
        if size < 1:
            raise WorkerError(f"concurrency must be at least 1, got {size}")
        self.app_spec = app_spec
        self.size = size
        self.loglevel = loglevel
        self.log_format = log_format
        self.faults_spec = faults_spec
        self.overrides = dict(overrides or {})
        self.capacity = capacity
        self.children: list[ChildProc] = []
        self._next_index = 0
        self.replaced = 0
        self._owner: int | None = None     # the thread that starts children (the worker's loop)
        self._owed = 0                     # replacements asked for on another thread, not started yet

    def start(self, timeout_s: float = 120.0) -> None:
        """Spawn the children and wait until all are ready."""
        self.spawn()
        self.wait_ready(timeout_s)

    def spawn(self) -> None:
        """Spawn the children without waiting for them (the worker joins its group meanwhile)."""
        self._owner = threading.get_ident()
        for _ in range(self.size):
            self.children.append(self._spawn())

    def _spawn(self) -> ChildProc:
        index = self._next_index
        self._next_index += 1
        parent_conn, child_conn = _ctx.Pipe(duplex=True)
        state = _ctx.RawArray("d", 3)
        claim_lock = _ctx.Lock()
        proc = _ctx.Process(
            target=child_main, name=f"ktasks-child-{index}", daemon=True,
            args=(self.app_spec, index, child_conn, state, os.getpid(), self.loglevel, self.log_format,
                  self.faults_spec, self.overrides, claim_lock),
        )
        proc.start()
        child_conn.close()
        logger.debug("started child %d (pid %s)", index, proc.pid)
        return ChildProc(index, proc, parent_conn, state, capacity=self.capacity, claim_lock=claim_lock)

    def wait_ready(self, timeout_s: float) -> None:
        """Wait until every child has imported the app and said it is ready.

        A child that exits on its own while starting (it could not import the
        app, say) stops the worker with the reason. One killed by a signal (the
        OOM killer, an operator's ``kill -9``) says nothing about the app: it is
        replaced, a few times at most, as a child that dies later would be.
        """
        deadline = time.monotonic() + timeout_s
        signalled = 0
        while not all(c.ready for c in self.children):
            if time.monotonic() > deadline:
                raise WorkerError(f"children did not start within {timeout_s:.0f} s")
            for event in self.poll(0.5):
                if event.kind != "died":
                    continue
                code = event.exitcode
                if code is not None and code < 0 and signalled < 3 * self.size:
                    signalled += 1
                    logger.warning("child %d was killed by signal %d while starting: starting another",
                                   event.child.index, -code)
                    self.remove(event.child)
                    self.children.append(self._spawn())
                    continue
                raise WorkerError(
                    f"child {event.child.index} exited with code {code} while starting; "
                    f"is the app importable as {self.app_spec!r}? (see the log above)")

    def idle(self) -> list[ChildProc]:
        return [c for c in self.children if c.idle]

    def dispatch(self, child: ChildProc, jobs: list[Any], payload: list[list[Any]]) -> None:
        """Hand a batch to an idle child; ``payload`` is the wire form of ``jobs``."""
        for job in jobs:
            child.outstanding[job.seq] = job
        try:
            child.conn.send_bytes(pack(payload))
        except (BrokenPipeError, OSError):
            # The child died; its sentinel fires and the death handler requeues these jobs.
            logger.debug("child %d pipe closed during dispatch", child.index)

    def poll(self, timeout_s: float) -> list[ChildEvent]:
        """Wait up to ``timeout_s`` for results or deaths."""
        if not self.children:
            time.sleep(timeout_s)
            return []
        by_conn = {c.conn: c for c in self.children}
        by_sentinel = {c.process.sentinel: c for c in self.children}
        ready = wait(list(by_conn) + list(by_sentinel), timeout_s)
        events: list[ChildEvent] = []
        dead: set[ChildProc] = set()
        for obj in ready:
            if obj in by_conn:
                child = by_conn[obj]
                # Drain everything the child sent before looking at whether it died.
                while True:
                    try:
                        if not child.conn.poll():
                            break
                        msg = unpack(child.conn.recv_bytes())
                    except (EOFError, OSError):
                        dead.add(child)
                        break
                    if msg[0] == READY:
                        child.ready = True
                    elif msg[0] == RESULTS:
                        events.append(ChildEvent(child, "results", msg[1]))
            else:
                dead.add(by_sentinel[obj])
        for child in dead:
            child.process.join(timeout=1.0)
            if child.process.is_alive():
                continue  # pipe trouble but alive: the sentinel will tell
            events.append(ChildEvent(child, "died", exitcode=child.process.exitcode))
        return events

    def remove(self, child: ChildProc) -> None:
        if child in self.children:
            self.children.remove(child)
        try:
            child.conn.close()
        except OSError:
            pass

    def replace(self, child: ChildProc) -> ChildProc | None:
        """Forget a dead (or retired) child and spawn another in its place.

        Only the thread that started the pool spawns: a child's parent-death signal
        (PR_SET_PDEATHSIG) fires when the *thread* that forked it exits, so a child started
        on a short-lived thread (a rebalance callback's) would be killed with that thread.
        Asked on another thread, the replacement is owed and :meth:`refill` starts it (None
        is returned).
        """
        self.remove(child)
        if self._owner is not None and threading.get_ident() != self._owner:
            self._owed += 1
            logger.debug("child %d: replacement deferred to the worker's loop", child.index)
            return None
        return self._add()

    def refill(self) -> None:
        """Start the replacements owed (call on the thread that started the pool)."""
        while self._owed > 0:
            self._owed -= 1
            self._add()

    def _add(self) -> ChildProc:
        new = self._spawn()
        self.children.append(new)
        self.replaced += 1
        return new

    def kill(self, child: ChildProc) -> None:
        if child.process.is_alive():
            child.process.kill()
        child.process.join(timeout=5.0)

    def retire(self, child: ChildProc) -> None:
        """Ask an idle child to exit; its death event then triggers the replacement."""
        child.retiring = True
        try:
            child.conn.send_bytes(pack([STOP]))
        except OSError:
            pass

    def stop(self, timeout_s: float = 10.0, children: Iterable[ChildProc] | None = None) -> None:
        """Ask children to exit after their current batch; kill those that don't in time."""
        targets = list(self.children if children is None else children)
        for child in targets:
            try:
                child.conn.send_bytes(pack([STOP]))
            except OSError:
                pass
        deadline = time.monotonic() + timeout_s
        for child in targets:
            child.process.join(timeout=max(0.0, deadline - time.monotonic()))
            if child.process.is_alive():
                logger.warning("child %d did not stop in time; killing it", child.index)
                self.kill(child)
            self.remove(child)

    def terminate(self) -> None:
        """Kill every child now (cold shutdown)."""
        for child in list(self.children):
            self.kill(child)
            self.remove(child)
