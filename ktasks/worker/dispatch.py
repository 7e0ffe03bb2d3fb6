"""Handing ready jobs to children, in batches, and taking their results back.

The ready queue holds jobs in the order they may run (a key's next job goes
to its front when the one before it finishes). Quick tasks go to a child in
batches, so a no-op task does not cost a pipe round trip each; a task not
known to be quick goes alone, so nothing waits behind it in a busy child
while others idle. When every child is busy, one running a short task (under
0.1 s on average, and running for less than that so far) is handed its next
job, which it starts without waiting for a round trip through the parent's
loop. If that task then runs 0.1 s, the job is taken back before it starts
(:meth:`ChildProc.take_back`) and goes to the front of the queue again, so
it never waits long behind a task that turned slow. A child that dies fails
the job it was running (the
parent knows which from the child's shared state) and its other jobs run
again; a child past a task's hard time limit is killed here.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Any

from ..errors import WorkerLost
from ..kafka import TopicPartition
from ..middleware import Dispatched, timelimits
from .outcomes import Outcomes
from .partitions import Job, Partitions
from .pool import ChildProc, Pool
from .protocol import OK, job_wire

logger = logging.getLogger(__name__)

__all__ = ["Dispatcher", "QUICK_TASK_S", "LOOKAHEAD_TASK_S"]

#: Tasks whose average run time is below this are batched to children; others go one at a time.
QUICK_TASK_S = 0.005
#: A busy child whose task is under this on average, and has run less than this, is handed its next
#: job; the job is taken back if the task runs this long after all.
LOOKAHEAD_TASK_S = 0.1


class Dispatcher:
    """The ready queue and the jobs out in children (``in_flight``)."""

    def __init__(self, pool: Pool, partitions: Partitions, outcomes: Outcomes, settings: Any,
                 stopping: Callable[[], bool]) -> None:
        self.pool = pool
        self.partitions = partitions
        self.outcomes = outcomes
        self.settings = settings
        self._stopping = stopping
        self.ready: deque[Job] = deque()
        self.in_flight = 0
        self.durations: dict[str, float] = {}    # task name -> moving average of its run time
        self._taken_back = 0                      # jobs taken back from children, for their fresh seqs
        partitions.on_drop(self.forget)

    def queue(self, job: Job) -> None:
        """``job`` may run: behind the jobs already ready."""
        self.ready.append(job)

    def queue_first(self, job: Job) -> None:
        """``job`` may run next (its key's previous job just finished)."""
        self.ready.appendleft(job)

    def forget(self, gone: set[TopicPartition]) -> None:
        """Drop the queued jobs of ``gone`` partitions (uncommitted: their next owner gets them)."""
        if self.ready:
            self.ready = deque(j for j in self.ready if j.ps.tp not in gone)

    def running_for(self, tps: Iterable[TopicPartition]) -> int:
        """Jobs of ``tps`` out in children."""
        wanted = set(tps)
        return sum(1 for c in self.pool.children for j in c.outstanding.values() if j.ps.tp in wanted)

    def dispatch(self) -> None:
        if not self.ready:
            return
        stack = self.outcomes.app.middleware
        room = stack.dispatch_room() if stack.has("dispatch_room") else None
        if room == 0:
            return
        idle = self.pool.idle()
        size = max(1, min(self.settings.max_batch, math.ceil(len(self.ready) / len(self.pool.children))))
        limit = self.settings.max_tasks_per_child
        for child in idle:
            # A batch never takes a child past max_tasks_per_child: it is retired only once idle.
            take = max(1, min(size, limit - child.tasks_done)) if limit else size
            if child.capacity > 1:  # an event-loop child: fill its free slots, each job runs on its own
                take = min(take, child.capacity - len(child.outstanding))
            if room is not None:
                take = min(take, room)
            given = self._give(child, take)
            if not given:
                return
            if room is not None:
                room -= given
                if room <= 0:
                    return
            if not self.ready:
                return
        # Every child is busy and jobs still wait: a child running a short task gets its next
        # job now, so it starts it without waiting for a round trip through this loop.
        for child in self.pool.children:
            if not self.ready or (room is not None and room <= 0):
                return
            if self._looks_ahead(child) and self._give(child, 1):
                child.ahead = next(reversed(child.outstanding))
                if room is not None:
                    room -= 1

    def _looks_ahead(self, child: ChildProc) -> bool:
        """Whether busy ``child`` takes one job more: it runs its only job, a task whose average
        run time is under :data:`LOOKAHEAD_TASK_S`, for less than that so far."""
        if (not child.ready or child.retiring or child.capacity != 1 or len(child.outstanding) != 1
                or child.claim_lock is None):
            return False
        limit = self.settings.max_tasks_per_child
        if limit and child.tasks_done + 2 > limit:
            return False
        running = child.running()
        if running is None:
            return False          # between two jobs: its result is on its way
        job = child.outstanding.get(running[0])
        if job is None or job.task is None:
            return False
        avg = self.durations.get(job.task.name)
        return avg is not None and avg < LOOKAHEAD_TASK_S and time.monotonic() - running[1] < LOOKAHEAD_TASK_S

    def take_back_waiting(self) -> None:
        """Take back a job handed ahead to a child whose task has now run :data:`LOOKAHEAD_TASK_S`."""
        now = time.monotonic()
        for child in self.pool.children:
            seq = child.ahead
            if seq is None:
                continue
            running = child.running()
            if seq not in child.outstanding or (running is not None and running[0] == seq):
                child.ahead = None        # finished, lost with its child, or started
                continue
            if running is None or now - running[1] < LOOKAHEAD_TASK_S or not child.take_back(seq):
                continue
            child.ahead = None
            job = child.outstanding.pop(seq)
            self.in_flight -= 1
            # A fresh seq: the child skips the old one when it reads it, and this job may go to it again.
            self._taken_back += 1
            job.seq = -self._taken_back
            self.ready.appendleft(job)
            logger.info("took back job %s (%s/%d@%d) from child %d: the task before it has run %.2fs",
                         seq, job.record.topic, job.record.partition, job.offset, child.index, now - running[1])

    def _give(self, child: ChildProc, take: int) -> int:
        """Hand ``child`` up to ``take`` ready jobs (quick ones batched, others alone); how many it got."""
        jobs: list[Job] = []
        while self.ready and len(jobs) < take:
            job = self.ready[0]
            if not self.partitions.owns(job) or job.ps.revoking:
                self.ready.popleft()
                continue
            quick = child.capacity > 1 or self.durations.get(job.task.name, QUICK_TASK_S) < QUICK_TASK_S
            if jobs and not quick:
                break
            jobs.append(self.ready.popleft())
            if not quick:
                break
        if not jobs:
            return 0
        self.pool.dispatch(child, jobs, [job_wire(j) for j in jobs])
        self.in_flight += len(jobs)
        stack = self.outcomes.app.middleware
        if stack.has("tasks_dispatched"):
            stack.after("tasks_dispatched", [Dispatched(
                j.record.topic, j.record.partition, j.offset, j.task.name,
                j.message.ledger_key if j.message is not None else "") for j in jobs])
        return len(jobs)

    def collect(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for results and deaths, and end the jobs they concern."""
        events = self.pool.poll(timeout_s)
        for event in events:
            child = event.child
            if event.kind == "results":
                for res in event.results:
                    job = child.outstanding.pop(res[0], None)
                    if job is None:
                        continue
                    self.in_flight -= 1
                    child.tasks_done += 1
                    if res[1] == OK and job.task is not None and self.partitions.owns(job):
                        name, duration = job.task.name, res[2]
                        avg = self.durations.get(name)
                        self.durations[name] = duration if avg is None else 0.8 * avg + 0.2 * duration
                    self.outcomes.finish(job, res)
                limit = self.settings.max_tasks_per_child
                if limit and not child.outstanding and child.tasks_done >= limit and not self._stopping():
                    logger.info("child %d ran %d tasks (max_tasks_per_child): replacing it",
                                child.index, child.tasks_done)
                    self.pool.retire(child)
            else:
                self._child_died(child, event.exitcode)
        if events:
            stack = self.outcomes.app.middleware
            if stack.has("results_collected"):
                stack.after("results_collected")

    def _child_died(self, child: ChildProc, exitcode: int | None) -> None:
        jobs = list(child.outstanding.values())
        child.outstanding.clear()
        self.in_flight -= len(jobs)
        running = child.running()
        how = f"signal {-exitcode}" if exitcode is not None and exitcode < 0 else f"exit code {exitcode}"
        if child.retiring and not jobs:
            logger.debug("child %d retired", child.index)
        else:
            logger.error("child %d (pid %s) died (%s) with %d task(s) assigned", child.index, child.pid, how,
                         len(jobs))
        lost_seq = running[0] if running is not None else None
        requeue: list[Job] = []
        for job in jobs:
            if not self.partitions.owns(job):
                continue          # a revoked epoch's record: its new owner runs it
            if job.seq == lost_seq:
                killed_for_limit = child.kill_reason == timelimits.REASON
                exc = timelimits.exceeded(job.task) if killed_for_limit else WorkerLost(f"child process died ({how})")
                self.outcomes.stats.lost += 1
                assert running is not None
                self.outcomes.failed_in_parent(job, exc, timelimits.REASON if killed_for_limit else "worker-lost",
                                               time.monotonic() - running[1])
            else:
                requeue.append(job)
        # Jobs the child had not started (or had finished without reporting) run again;
        # the ledger skips any that did finish.
        self.ready.extendleft(reversed(requeue))
        if not self._stopping():
            self.pool.replace(child)
        else:
            self.pool.remove(child)

    def check_time_limits(self) -> None:
        """Kill a child whose running task passed its hard time limit (its death then fails the task)."""
        now = time.monotonic()
        for child in list(self.pool.children):
            running = child.running()
            if running is None or child.kill_reason:
                continue
            job = child.outstanding.get(running[0])
            limit = timelimits.overdue(job.task, now - running[1]) if job is not None else None
            if job is not None and limit:
                logger.error("task %s[%s] ran past its time limit (%.1fs): killing child %d",
                             job.message.task if job.message else "?", job.message.id if job.message else "?",
                             limit, child.index, extra=job.log_extra())
                child.kill_reason = timelimits.REASON
                self.pool.kill(child)
