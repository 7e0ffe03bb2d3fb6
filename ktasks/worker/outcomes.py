"""What becomes of each record the worker took: counted, told to middleware, finished or republished.

A child's result (:mod:`.protocol`) or a failure the parent saw (a child
killed past its time limit, or dead under a task) ends here: it is fenced
by the job's epoch, reported to middleware (``task_finished``), and then
either completes the job (its offset becomes committable and the next job of
its key is released) or hands it to the :class:`~.outbox.Outbox` for a retry
or a dead letter, as :mod:`ktasks.middleware.retries` decides.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import WorkerError, exception_name
from ..middleware import TaskEvent, retries
from ..middleware import deadletter as dead
from .outbox import Outbox
from .partitions import Job, Partitions
from .protocol import DEAD, OK, POISON, RETRY, SKIP, outcome_of
from .transactions import Transactions

logger = logging.getLogger(__name__)

__all__ = ["Outcomes", "Stats"]


@dataclass
class Stats:
    succeeded: int = 0
    skipped: int = 0
    retried: int = 0
    dead_lettered: int = 0
    lost: int = 0
    committed: int = 0                # finished records whose offsets were committed
    started_at: float = field(default_factory=time.monotonic)


#: Outcomes of tasks that will never run, and are not dead-lettered either.
NOT_RUN = ("revoked", "expired")


class Outcomes:
    """Ends jobs. ``release(job)`` puts the next job of a finished job's key at the front of the ready queue."""

    def __init__(self, app: Any, partitions: Partitions, stats: Stats, release: Callable[[Job], None]) -> None:
        self.app = app
        self.partitions = partitions
        self.stats = stats
        self._release = release
        self.outbox: Outbox | None = None    # set once the outbox exists (it calls complete())
        self.transactions: Transactions | None = None   # --transactional: records ride in the transaction

    def finish(self, job: Job, res: list[Any]) -> None:
        """A child's result for ``job`` (see :mod:`.protocol`)."""
        assert self.outbox is not None
        status, duration = res[1], res[2]
        tx = self.transactions
        if self.outbox.fenced(job, f"result {status!r}"):
            if tx is not None and status == OK and job.message is not None and job.task is not None:
                tx.dropped(job.message.ledger_key, job.task.name)
            return
        if tx is not None and status in (OK, DEAD):
            # The task's records (protocol: the result's 8th field) commit with its offset.
            if len(res) > 7 and res[7]:
                tx.add(res[7])
            if status == OK and job.message is not None and job.task is not None:
                tx.prepared(job.message.ledger_key, job.task.name)
        outcome = outcome_of(res)
        self.report(job, outcome, duration if outcome in ("succeeded", "retried", "failed") else None,
                    reason=res[3] if status == DEAD else dead.POISON if status == POISON else None)
        if status == OK:
            self.stats.succeeded += 1
            self.complete(job)
        elif status == SKIP:
            self.stats.skipped += 1
            self.complete(job)
        elif status == RETRY:
            self.outbox.retry(job, float(res[3]), res[4], res[5])
        elif status == DEAD:
            self.outbox.dead_letter(job, res[3], res[4], res[5], res[6])
        elif status == POISON:
            self.outbox.dead_letter(job, dead.POISON, res[4], res[5], res[6])
        else:
            raise WorkerError(f"unknown result status {status!r} from a child")

    def failed_in_parent(self, job: Job, exc: BaseException, reason: str, run_time_s: float) -> None:
        """An attempt the parent saw fail (its child killed or dead): retried or dead-lettered."""
        assert job.message is not None and self.outbox is not None
        exc_type = exception_name(exc)
        decision = retries.decide(job.task, exc, job.message.attempt, reason=reason)
        self.report(job, "retried" if decision.retry else "failed", run_time_s,
                    reason=reason if decision.retry else decision.reason)
        if decision.retry:
            logger.warning("task %s[%s]: %s; retry %d/%d in %.1fs", job.message.task, job.message.id, exc,
                           job.message.attempt + 1, job.task.max_retries(), decision.delay_s, extra=job.log_extra())
            self.outbox.retry(job, decision.delay_s, exc_type, str(exc))
        else:
            logger.error("task %s[%s]: %s; sending to the dead-letter topic", job.message.task,
                         job.message.id, exc, extra=job.log_extra())
            self.outbox.dead_letter(job, decision.reason or reason, exc_type, str(exc))

    def skipped(self, job: Job, outcome: str, reason: str | None) -> None:
        """An intake middleware said not to run ``job``: it counts as finished."""
        logger.info("task %s[%s] not run: %s%s", job.message.task if job.message else "?",
                    job.message.id if job.message else "?", outcome,
                    f" ({reason})" if reason else "", extra=job.log_extra())
        job.takes_key = False
        self.stats.skipped += 1
        self.report(job, outcome, started=False, reason=reason)
        self.complete(job)

    def report(self, job: Job, outcome: str, run_time_s: float | None = None, *, started: bool = True,
               reason: str | None = None) -> None:
        """Tell middleware (metrics, reports) what became of a record; see ktasks.middleware.TaskEvent."""
        if outcome in NOT_RUN and job.message is not None and self.app.middleware.has("task_not_run"):
            self.app.middleware.after("task_not_run", job.message, outcome, reason)
        if self.app.middleware.has("task_finished"):
            name = job.task.name if job.task is not None else \
                "(undecodable)" if job.message is None else "(unregistered)"
            self.app.middleware.after("task_finished", TaskEvent.of(
                job.message, name, outcome, job.record, run_time_s=run_time_s, started=started, reason=reason))

    def complete(self, job: Job) -> None:
        """``job`` is done: its offset may be committed, and the next job of its key may run."""
        ps = job.ps
        if not self.partitions.owns(job):
            # The partition was revoked (or lost) since this record was taken: its new owner
            # decides about it; committing here could move someone else's offset.
            logger.debug("completion of %s@%d after its partition moved: not committed", ps.tp, job.offset)
            return
        ps.tracker.done(job.offset)
        ps.finished[job.offset] = job
        nxt = self.partitions.release_key(job)
        if nxt is not None:
            self._release(nxt)
        self.partitions.update_pause(ps)
