"""The idempotency ledger in the child: whether a record runs, and what it ended as.

Before a task runs the child asks :meth:`LedgerGate.admit`: the ledger says run
it, skip it (its key already succeeded), refuse it as a poison message
(started ``max_starts`` times without finishing), or wait (the key runs in
another live process). After it ran, the outcome is recorded here, before the
result leaves the child, so a completion the parent commits is always in the
ledger. Tasks declared ``ledger_transaction=True`` run inside the ledger's
transaction (:meth:`LedgerGate.transaction`).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .base import Middleware

if TYPE_CHECKING:
    import sqlite3

    from ..ledger import Ledger
    from ..message import Message
    from ..task import Task

logger = logging.getLogger(__name__)

__all__ = ["Idempotency", "LedgerGate", "Admission"]


@dataclass(frozen=True)
class Admission:
    """The ledger's answer: ``run``, ``skip``, ``poison`` or ``running`` (``pid``: who runs the key)."""

    kind: str
    pid: int | None = None


RUN = Admission("run")


class LedgerGate:
    """One child's view of the ledger (``ledger`` is None when ``ledger_enabled`` is off)."""

    def __init__(self, app: Any, host: str, pid: int) -> None:
        self.host = host
        self.pid = pid
        self.ledger: Ledger | None = None
        if app.settings.ledger_enabled:
            from ..ledger import Ledger

            # max_pending=1: each success rides in the next task's start transaction, so a
            # child killed mid-batch re-runs only the task it was running, for no extra commit.
            self.ledger = Ledger(Ledger.path_for_app(app), max_pending=1)

    def admit(self, task: Task[..., Any], msg: Message, *, force: bool, replay: bool,
              wait_running_s: float) -> Admission:
        """Record a start of ``msg`` and say whether it runs (no ledger: it always does)."""
        if self.ledger is None:
            return RUN
        decision = self.ledger.begin(msg.ledger_key, task.name, msg.attempt, task.max_starts(), host=self.host,
                                     pid=self.pid, force=force, replay=replay, wait_running_s=wait_running_s)
        if decision.kind == "running":
            return Admission("running", decision.entry.pid if decision.entry else None)
        if decision.kind in ("skip", "poison"):
            return Admission(decision.kind.value)
        return RUN

    @contextmanager
    def transaction(self, task: Task[..., Any]) -> Iterator[sqlite3.Connection | None]:
        """The ledger's open transaction for a ``ledger_transaction`` task, else None (no transaction)."""
        if not (task.options.ledger_transaction and self.ledger is not None):
            yield None
            return
        with self.ledger.transaction(immediate=True) as conn:
            yield conn

    def succeeded(self, msg: Message, task: Task[..., Any], result: Any, duration_s: float,
                  conn: sqlite3.Connection | None = None, prepared: bool = False) -> None:
        """Record the success (``prepared``: its Kafka transaction is still to commit, see ktasks.worker.transactions)."""
        if self.ledger is not None:
            if conn is not None:
                self.ledger.succeeded(msg.ledger_key, result, duration_s, task=task.name, conn=conn)
            else:
                self.ledger.succeeded(msg.ledger_key, result, duration_s, task=task.name, prepared=prepared)

    def failed(self, msg: Message, task_name: str, cause: BaseException, tb: str) -> None:
        if self.ledger is not None:
            self.ledger.failed(msg.ledger_key, cause, tb, task=task_name)

    def flush(self) -> None:
        """Make the recorded outcomes durable (before their results leave the child)."""
        if self.ledger is not None:
            self.ledger.flush()


class Idempotency(Middleware):
    """Owns ``max_starts`` and ``ledger_transaction``; the child's :class:`LedgerGate` applies them.

    In the worker parent it checks the ledger file before the children start
    and prunes old entries in the background while the worker runs.
    """

    task_options: ClassVar[Mapping[str, Any]] = {"max_starts": None, "ledger_transaction": False}

    def __init__(self) -> None:
        self._pruner: Any = None

    def worker_starting(self, worker: Any) -> None:
        if not worker.settings.ledger_enabled:
            return
        from ..ledger import Ledger, Pruner, check_ledger

        # The worker's own settings (CLI flags) decide where. Checked here, once: a corrupt
        # or read-only file would otherwise fail every child, replaced again and again.
        path = worker.settings.ledger_path or Ledger.default_path(worker.group_id)
        check_ledger(path)
        if worker.settings.ledger_changelog:
            from ..ledger_changelog import LedgerChangelog

            LedgerChangelog.install(worker, str(path))   # idempotency follows a partition to any host
        self._pruner = Pruner(path, worker.settings.ledger_retention_s)  # old entries go in the background
        self._pruner.start()

    def worker_stopped(self, worker: Any) -> None:
        if self._pruner is not None:
            self._pruner.stop(timeout=10.0)
            self._pruner = None
