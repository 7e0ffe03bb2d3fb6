"""Handles to a task's result: :class:`AsyncResult` (one task) and :class:`GroupResult` (a group's)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from ..errors import ResultsDisabled
from .records import ResultRecord

if TYPE_CHECKING:
    from ..app import App

__all__ = ["AsyncResult", "GroupResult", "PENDING", "SUCCESS", "FAILURE"]

PENDING, SUCCESS, FAILURE = "PENDING", "SUCCESS", "FAILURE"


def disabled_message(task_name: str | None, task_id: str) -> str:
    name = task_name or "this task"
    return (f"{name}[{task_id}] does not store its result, so get() would wait forever: declare it "
            f"@app.task(store_result=True), or set store_results=True on the app (see docs/results.md)")


class AsyncResult:
    """The result of one task, by id: ``get()``, ``ready()``, ``status``.

    From ``delay()`` (the sending process) it waits on the process's reply
    reader; from ``app.result(task_id)`` (any process) it reads the task id's
    partition of the results topic.
    """

    def __init__(self, app: App, task_id: str, *, task_name: str | None = None, via_reply: bool = False,
                 enabled: bool = True) -> None:
        self.app = app
        self.id = task_id
        self.task_name = task_name
        self._via_reply = via_reply
        self._enabled = enabled
        self._record: ResultRecord | None = None

    def _fetch(self, timeout_s: float | None) -> ResultRecord | None:
        if self._record is not None:
            return self._record
        if not self._enabled:
            raise ResultsDisabled(disabled_message(self.task_name, self.id))
        if self.app.settings.eager:
            from .middleware import results_middleware

            self._record = results_middleware(self.app).eager_results.get(self.id)
            if self._record is None:
                raise ResultsDisabled(disabled_message(self.task_name, self.id))
            return self._record
        if self._via_reply:
            from .replies import reader_for

            reader = reader_for(self.app)
            record = reader.wait(self.id, timeout_s)
            if record is not None:
                reader.forget(self.id)
        else:
            from .lookup import find_result

            record = find_result(self.app, self.id, timeout_s)
        self._record = record
        return record

    def get(self, timeout: float | None = None) -> Any:
        """The task's return value, waiting up to ``timeout`` seconds (None: as long as it takes).

        Raises :class:`~ktasks.errors.TaskFailed` if it failed,
        :class:`TimeoutError` if no result came in time,
        :class:`~ktasks.errors.ResultExpired` if it is older than
        ``result_expires_s``, :class:`~ktasks.errors.ResultsDisabled` at once
        if the task stores no result.
        """
        record = self._fetch(timeout)
        if record is None:
            raise TimeoutError(f"no result for task {self.task_name or ''}[{self.id}] within {timeout} s: not "
                               "finished yet, or its result expired (result_expires_s="
                               f"{self.app.settings.result_expires_s})")
        return record.outcome()

    def ready(self) -> bool:
        """Whether the task has finished (succeeded or failed); never waits long."""
        return self._fetch(0.0) is not None

    @property
    def status(self) -> str:
        """``PENDING``, ``SUCCESS`` or ``FAILURE`` (Celery's names)."""
        record = self._fetch(0.0)
        if record is None:
            return PENDING
        return SUCCESS if record.ok else FAILURE

    def successful(self) -> bool:
        return self.status == SUCCESS

    def failed(self) -> bool:
        return self.status == FAILURE

    def __repr__(self) -> str:
        return f"<AsyncResult {self.task_name or ''}[{self.id}]>"


class GroupResult:
    """The results of a group's members, in the group's order."""

    def __init__(self, results: list[AsyncResult]) -> None:
        self.results = results

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.results]

    def get(self, timeout: float | None = None) -> list[Any]:
        """Every member's value in order; the first failure raises its ``TaskFailed``."""
        deadline = None if timeout is None else time.monotonic() + timeout
        values = []
        for result in self.results:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            values.append(result.get(timeout=left))
        return values

    def ready(self) -> bool:
        return all(r.ready() for r in self.results)

    def __len__(self) -> int:
        return len(self.results)

    def __repr__(self) -> str:
        return f"<GroupResult of {len(self.results)}>"
