"""A child that runs ``async def`` tasks: one event loop, up to ``async_concurrency`` coroutines at once.

When the app registers any ``async def`` task, every child runs this loop
instead of :class:`~ktasks.worker.child.Child`'s one-at-a-time one. The
parent treats such a child as having ``async_concurrency`` slots and keeps
them filled; the child reads new jobs from its pipe while coroutines run, and
reports each job as soon as it finishes, so each record is committed only once
*it* finished, as for plain tasks.

Everything else is the plain child's: the ledger decides (skip, poison) before
a job starts and records its success before its result leaves the child;
failures go through :meth:`Child._failed` (retry or dead letter); a plain
(``def``) task of the same app runs inline on the loop, holding the others
while it runs.

Time limits: the loop cancels a coroutine at its ``soft_time_limit_s`` or
``time_limit_s``, whichever comes first; the task sees ``CancelledError``
at its current ``await`` (it may clean up), and fails with
``SoftTimeLimitExceeded`` or ``TimeLimitExceeded``, a hard limit being
dead-lettered with reason ``time-limit`` once no retry is left. A coroutine
that blocks the loop cannot be cancelled: the parent kills the whole child
:data:`BLOCKED_LOOP_GRACE_S` after the time limit of the oldest running job,
as it kills a plain child (the other jobs of that child run again). A
coroutine cancelled for any other reason fails with ``TaskCancelled``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from .. import faults
from ..errors import SoftTimeLimitExceeded, TaskCancelled, TimeLimitExceeded
from ..logs import bind_task, task_extra
from ..message import decode, pack, unpack
from ..task import TaskContext
from .child import RUNNING, Child
from .protocol import DEAD, READY, STOP

logger = logging.getLogger(__name__)

__all__ = ["AsyncChild", "BLOCKED_LOOP_GRACE_S"]

#: The parent kills a child whose oldest coroutine is this far past its time limit (the loop is blocked).
BLOCKED_LOOP_GRACE_S = 2.0


class AsyncChild(Child):
    """The loop of one child process for an app with ``async def`` tasks."""

    def __init__(self, app: Any, index: int, conn: Any, state: Any, parent_pid: int) -> None:
        super().__init__(app, index, conn, state, parent_pid)
        self.slots = max(1, int(app.settings.async_concurrency))
        self._running: dict[int, tuple[float, float | None]] = {}   # seq -> (start, time limit)
        self._keys: dict[tuple[str, str], asyncio.Event] = {}      # ledger keys running here
        self._results: list[list[Any]] = []
        self._flush_scheduled = False
        self._closing = False

    def serve(self) -> None:
        self.conn.send_bytes(pack([READY, self.pid]))
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        readable = asyncio.Event()
        loop.add_reader(self.conn.fileno(), readable.set)
        jobs: set[asyncio.Task[None]] = set()
        try:
            while True:
                await readable.wait()
                readable.clear()
                while self.conn.poll():
                    try:
                        batch = unpack(self.conn.recv_bytes())
                    except (EOFError, OSError):
                        return  # parent gone: nobody would commit what finishes now
                    if batch and batch[0] == STOP:
                        # Like a plain child after its batch: finish what runs, report it, exit.
                        if jobs:
                            await asyncio.wait(jobs)
                        self._flush()
                        return
                    for job in batch:
                        t = asyncio.create_task(self._job(*job))
                        jobs.add(t)
                        t.add_done_callback(jobs.discard)
        finally:
            self._closing = True
            loop.remove_reader(self.conn.fileno())

    # -- one job ------------------------------------------------------------------------
    async def _job(self, seq: int, value: bytes, topic: str, partition: int, offset: int, force: bool,
                   soft_limit_s: float | None, replay: bool = False, *_: Any) -> None:
        try:
            result = await self._run_async(seq, value, topic, partition, offset, force, soft_limit_s, replay)
        except asyncio.CancelledError:
            return  # shutting down with the parent gone
        except Exception:
            # A bug here must not strand the record: report it as failed so it is retried or dead-lettered.
            logger.exception("async child: job %d failed outside its task", seq)
            result = [seq, DEAD, 0.0, "failed", "ktasks.errors.WorkerError", "internal error in the child", None]
        self._results.append(result)
        if not self._flush_scheduled:
            # Results finishing in the same loop turn go to the parent in one message.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    async def _run_async(self, seq: int, value: bytes, topic: str, partition: int, offset: int, force: bool,
                         soft_limit_s: float | None, replay: bool) -> list[Any]:
        msg = decode(value)
        task = self.app.get_task(msg.task)
        ctx = TaskContext(task=task, message=msg, topic=topic, partition=partition, offset=offset)
        log_extra = task_extra(msg.task, msg.id, topic, partition, offset)
        bind_task(log_extra)  # a context variable: each coroutine's log lines carry its own task's fields
        key = (msg.ledger_key, task.name)
        refused = await self._admit_async(seq, task, msg, force, replay, log_extra)
        if refused is not None:
            return refused
        done = self._keys[key] = asyncio.Event()
        try:
            faults.point("before_task", self.parent_pid)
            logger.info("task %s[%s] started (attempt %d)", msg.task, msg.id, msg.attempt, extra=log_extra)
            self.app.middleware.before("before_task", ctx)
            hard = task.options.time_limit_s
            t0 = time.perf_counter()
            self._started(seq, hard)
            result: Any = None
            error: BaseException | None = None
            try:
                result = await self._call_async(task, ctx, soft_limit_s, hard)
                faults.point("after_task", self.parent_pid)
                self.gate.succeeded(msg, task, result, time.perf_counter() - t0)
            except Exception as exc:
                error = exc
            finally:
                self._finished(seq)
            outcome = self._report(seq, ctx, result, error, time.perf_counter() - t0, log_extra)
            if isinstance(error, TimeLimitExceeded) and outcome[1] == DEAD:
                outcome[3] = "time-limit"  # as when the parent kills a plain task at its hard limit
            return outcome
        finally:
            done.set()
            if self._keys.get(key) is done:
                del self._keys[key]
            bind_task(None)

    async def _call_async(self, task: Any, ctx: TaskContext, soft_limit_s: float | None,
                          hard_limit_s: float | None) -> Any:
        """Await the task under its time limits; a cancellation is a failure, never a silent stop."""
        if not task.is_async:
            return self._call(task, ctx, soft_limit_s)  # a plain def task: inline, holding the loop
        value = task.run(ctx)
        limits = [(s, kind) for s, kind in ((soft_limit_s, "soft"), (hard_limit_s, "hard")) if s]
        limit_s, kind = min(limits) if limits else (None, "")
        try:
            return await asyncio.wait_for(value, limit_s)
        except asyncio.TimeoutError:
            if kind == "soft":
                raise SoftTimeLimitExceeded(f"soft time limit exceeded ({limit_s}s)") from None
            raise TimeLimitExceeded(f"ran past time_limit_s={limit_s}") from None
        except asyncio.CancelledError:
            if self._closing:
                raise  # the loop is shutting down (the parent is gone): nothing to report to
            raise TaskCancelled("the coroutine was cancelled") from None

    async def _admit_async(self, seq: int, task: Any, msg: Any, force: bool, replay: bool,
                           log_extra: dict[str, Any]) -> list[Any] | None:
        """:meth:`Child._admit`, waiting without blocking the loop while the key runs elsewhere.

        Here first (the same key twice in this child), then in another live
        process on this host (a sibling child, or a previous owner of the
        partition): a duplicate then finds the key succeeded and is skipped.
        """
        key = (msg.ledger_key, task.name)
        running_here = self._keys.get(key)
        if running_here is not None:
            await running_here.wait()
        delay, warned = 0.01, False
        while True:
            refused = self._admit(seq, task, msg, force, replay, log_extra, wait_running_s=0.0)
            if refused != RUNNING:
                return refused if isinstance(refused, list) else None
            if not warned:
                warned = True
                logger.warning("task %s[%s] (ledger key %s) is still running in pid %s: waiting for it "
                               "instead of running a second copy", msg.task, msg.id, key[0], self.running_pid,
                               extra=log_extra)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    # -- what the parent sees -------------------------------------------------------------
    def _started(self, seq: int, limit_s: float | None) -> None:
        self._running[seq] = (time.monotonic(), limit_s)
        self._publish_oldest()

    def _finished(self, seq: int) -> None:
        self._running.pop(seq, None)
        self._publish_oldest()

    def _publish_oldest(self) -> None:
        """Show the parent the oldest running job, its start moved by the grace the loop has to cancel it.

        The parent kills a child whose shown job ran past its time limit: with
        the grace, that happens only when the loop could not cancel it itself
        (a coroutine blocking the loop).
        """
        if not self._running:
            self.state[1] = 0.0
            return
        seq, (start, _) = min(self._running.items(), key=lambda item: item[1][0])
        self.state[0] = float(seq)
        self.state[1] = start + BLOCKED_LOOP_GRACE_S

    def _flush(self) -> None:
        self._flush_scheduled = False
        if self._results:
            results, self._results = self._results, []
            self._send(results)
