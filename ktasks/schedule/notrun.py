"""Recording in the ledger the records a worker took and did not run (revoked, expired)."""

from __future__ import annotations

import logging
from typing import Any

from ..errors import KtasksError
from ..middleware import Intake, Middleware, Skip

logger = logging.getLogger(__name__)

__all__ = ["NotRunRecorder"]


class NotRunRecorder(Middleware):
    """Base of intake middleware that skip records: each skip is written to the worker's ledger.

    The write happens in ``intake``, before the worker commits the record's
    offset, so ``ktasks ledger show ID`` always finds why a committed record did
    not run. It is one small SQLite transaction, and only for skipped records.
    """

    def __init__(self) -> None:
        self._ledger: Any = None

    def worker_started(self, worker: Any) -> None:
        if not worker.settings.ledger_enabled:
            return
        from ..ledger import Ledger

        self._ledger = Ledger(worker.settings.ledger_path or Ledger.default_path(worker.group_id))

    def worker_stopped(self, worker: Any) -> None:
        if self._ledger is not None:
            self._ledger.close()
            self._ledger = None

    def skip(self, record: Intake, state: str, reason: str) -> Skip:
        """The :class:`Skip` decision for ``record``, once the ledger has it as ``state``."""
        if self._ledger is not None:
            try:
                self._ledger.not_run(record.message.ledger_key, task=record.message.task, state=state,
                                     note=reason)
            except KtasksError:
                # The skip stands (running a revoked task is worse than a missing note).
                logger.exception("ledger: could not record %s as %s", record.message.id, state)
        return Skip(outcome=state, reason=reason)
