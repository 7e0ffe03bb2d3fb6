"""Eager mode: run a task inline at call time, the way a worker would.

``App(..., eager=True)`` (or ``KTASKS_EAGER=1``) makes ``delay()`` and
``apply_async()`` run the task in the caller instead of sending it. The
message still goes through the codec and the size check. Then the run follows
the worker's rules, so unit tests exercise what production runs:

* **Retries** are simulated: a failure the task's policy retries runs the task
  again at once (no sleeping), with ``ctx.attempt`` 1, 2, ... and the delay a
  worker would have waited recorded in :attr:`EagerResult.retry_delays_s`.
* **Dead letters**: when the policy gives up, :attr:`EagerResult.dead_letter_reason`
  says what a worker would have written in ``ktasks-dlt-reason``
  (``retries-exhausted``, ``not-retriable``, ``expired``).
* **Exceptions** are kept on the result: ``delay()`` returns, and
  :meth:`EagerResult.get` raises the last one. With ``eager_propagates=True``,
  ``delay()`` raises it, like Celery's ``task_eager_propagates``.
* **The ledger**: with ``ledger_enabled`` (the default), each app in eager
  mode records executions in a real ledger in a private temporary file, so an
  ``idempotency_key`` that already succeeded is skipped
  (:attr:`EagerResult.skipped`) exactly as a worker would skip it.

What eager mode does not do: time limits are not enforced, nothing goes
through Kafka (ordering by key, partitions, offsets), and delays
(``countdown``, retry backoff) are not waited for.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import PoisonMessage, TaskExpired
from .middleware import retries
from .task import EagerResult, TaskContext

if TYPE_CHECKING:
    from .app import App
    from .ledger import Ledger
    from .message import Message

logger = logging.getLogger(__name__)

__all__ = ["run_eager", "EagerLedger"]


class EagerLedger:
    """A real :class:`~ktasks.ledger.Ledger` in a private temporary folder, opened on first use.

    One SQLite connection per thread (SQLite's rule), all on the same file, so a
    call made from another thread (``delay_async``) sees the same records.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._dir: str | None = None
        self._pid = os.getpid()
        self._local = threading.local()

    def get(self) -> Ledger:
        from .ledger import Ledger

        with self._lock:
            if self._dir is None or self._pid != os.getpid():
                self._dir, self._pid, self._local = tempfile.mkdtemp(prefix="ktasks-eager-"), os.getpid(), \
                    threading.local()
            path = os.path.join(self._dir, "eager.ledger.sqlite3")
        ledger: Ledger | None = getattr(self._local, "ledger", None)
        if ledger is None or ledger.path != Path(path):
            ledger = self._local.ledger = Ledger(path)
        return ledger

    def reset(self) -> None:
        """Forget every recorded execution (a fresh ledger on next use)."""
        with self._lock:
            directory, self._dir = self._dir, None
            ledger: Ledger | None = getattr(self._local, "ledger", None)
            self._local = threading.local()
        if ledger is not None and self._pid == os.getpid():
            ledger.close()  # this thread's connection; other threads' ones are dropped with their file
        if directory is not None and self._pid == os.getpid():
            shutil.rmtree(directory, ignore_errors=True)


def run_eager(app: App, message: Message, topic: str) -> EagerResult:
    """Run ``message`` inline with the worker's retry, dead-letter, expiry and ledger rules."""
    task = app.get_task(message.task)
    ledger = app.eager_ledger.get() if app.settings.ledger_enabled else None
    key = message.ledger_key
    result = EagerResult(message.id, app=app)
    if message.expires is not None and time.time() > message.expires:
        result.exception = TaskExpired("expired before it ran")
        result.dead_letter_reason = "expired"
        app.middleware.after("on_dead_letter", message, "expired")
        return result
    while True:
        if ledger is not None:
            decision = ledger.begin(key, task.name, message.attempt, task.max_starts())
            if decision.kind == "skip":
                result.skipped = True
                entry = decision.entry
                result.result = entry.result_value() if entry is not None else None
                result.exception = None
                return result
            if decision.kind == "poison":
                result.exception = PoisonMessage(f"started {task.max_starts()} times without finishing")
                result.dead_letter_reason = "poison"
                return result
        ctx = TaskContext(task=task, message=message, topic=topic)
        app.middleware.before("before_task", ctx)
        t0 = time.perf_counter()
        try:
            value = _finish(task.run(ctx))
        except Exception as exc:
            app.middleware.after("after_task", ctx, None, exc)
            cause = retries.cause_of(exc)
            if ledger is not None:
                ledger.failed(key, cause, task=task.name)
                ledger.flush()
            result.attempts += 1
            result.exception = cause
            verdict = retries.decide(task, exc, message.attempt)
            if verdict.retry:
                delay = verdict.delay_s
                result.retry_delays_s.append(delay)
                message = replace(message, attempt=message.attempt + 1, due=time.time() + delay)
                app.middleware.after("on_retry", message, delay, None)
                logger.debug("eager: %s[%s] failed (%r); retry %d", message.task, message.id, cause,
                             message.attempt)
                continue
            result.dead_letter_reason = verdict.reason
            app.middleware.after("on_dead_letter", message, result.dead_letter_reason)
            return result
        app.middleware.after("after_task", ctx, value, None)
        if ledger is not None:
            ledger.succeeded(key, value, time.perf_counter() - t0, task=task.name)
            ledger.flush()
        result.attempts += 1
        result.result = value
        result.exception = None
        return result


def _finish(value: Any) -> Any:
    """An async def task's coroutine, run to its end: on a new event loop, in a thread if one is running here."""
    if not inspect.iscoroutine(value):
        return value
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(value)
    # Called from async code (e.g. an async test): this thread's loop is busy running the caller.
    with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, value).result()
