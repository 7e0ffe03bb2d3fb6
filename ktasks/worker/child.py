"""A prefork child: runs the tasks its parent hands it, one at a time.

Parent and child talk over a pipe in msgpack, never pickle: the parent sends
a batch of raw task records, the child runs them in order and sends results
back, batched so a no-op task does not cost a pipe round trip. Before a
result leaves the child, the ledger records it durably, so a completion the
parent commits is always in the ledger.

The child also publishes which record it is running, and since when, in a
small shared array; the parent reads it to enforce hard time limits and to
know which task was lost when a child dies.
"""

from __future__ import annotations

import ctypes
import importlib
import logging
import os
import signal
import socket
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from .. import faults
from ..errors import BrokerUnavailable, EnqueueError, exception_name
from ..kafka.errors import KafkaError
from ..logs import bind_task, configure_logging, log_line, task_extra
from ..message import decode, pack, unpack
from ..middleware import retries, timelimits
from ..middleware.idempotency import LedgerGate
from ..task import TaskContext
from .protocol import DEAD, OK, POISON, READY, RESULTS, RETRY, SKIP, STOP

logger = logging.getLogger(__name__)

# Result statuses (named in .protocol) are imported from here by older code.
__all__ = ["Child", "child_main", "load_app", "OK", "SKIP", "RETRY", "DEAD", "POISON", "RUNNING"]

#: What :meth:`Child._admit` answers while another live process runs the same ledger key.
RUNNING = "running"

#: Longest a finished result waits in the child before it is sent, when the batch goes on.
RESULT_FLUSH_S = 0.05
#: While a task's ledger key runs in another live process, a line about the wait this often.
RUNNING_LOG_S = 60.0
#: At INFO a task gets one line when it ends, and a "started" line too once it has run this long.
STARTED_LINE_AFTER_S = 1.0


def load_app(spec: str) -> Any:
    """Import ``module:attr`` given on the parent's command line (never from a message)."""
    module_name, _, attr = spec.partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr or "app")


def _die_with_parent() -> None:
    # If the parent is SIGKILLed, its children must not go on running tasks whose
    # completions nobody will ever commit: ask the kernel to kill us with it.
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except OSError:
            pass


class Child:
    """The loop of one child process."""

    def __init__(self, app: Any, index: int, conn: Connection, state: Any, parent_pid: int,
                 claim_lock: Any = None) -> None:
        self.app = app
        self.index = index
        self.conn = conn
        self.state = state
        self.claim_lock = claim_lock
        self.parent_pid = parent_pid
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.gate = LedgerGate(app, self.host, self.pid)
        self.ledger: Any = self.gate.ledger
        self.running_pid: int | None = None     # who holds the key when _admit answered RUNNING
        self.transactional = bool(app.settings.transactional)
        self._unsent: list[list[Any]] = []     # results the parent has not been sent yet
        self._unsent_since = 0.0                # when the oldest of them finished (monotonic)
        self._carried = False                   # they are the previous batch's, held for its successor's start
        # The running task, for its "started" line once it has run STARTED_LINE_AFTER_S (at INFO):
        # (monotonic start, name, id, attempt, log fields), or None.
        self._started_line: tuple[float, str, str, int, dict[str, Any]] | None = None
        self._start_lines: threading.Thread | None = None

    def serve(self) -> None:
        self.conn.send_bytes(pack([READY, self.pid]))
        while True:
            try:
                data = self.conn.recv_bytes()
            except (EOFError, OSError):
                return  # parent gone
            batch = unpack(data)
            if batch and batch[0] == STOP:
                self._send_unsent()
                return
            self._run_batch(batch)

    def _claim(self, seq: int) -> bool:
        """Mark job ``seq`` as running; False if the parent took it back (it waited behind a long task)."""
        lock = self.claim_lock
        if lock is None:
            self.state[0], self.state[1] = float(seq), time.monotonic()
            return True
        with lock:
            if self.state[2] == float(seq):
                return False
            self.state[0], self.state[1] = float(seq), time.monotonic()
        return True

    def _run_batch(self, batch: Sequence[Sequence[Any]]) -> None:
        for i, job in enumerate(batch):
            seq = job[0]
            if not self._claim(seq):
                logger.debug("job %s was taken back by the parent: skipping it", seq)
                if self._carried:
                    self._send_unsent()    # they waited for this job's start, which will not come
                continue
            try:
                result = self._run_one(*job)
            finally:
                self.state[1] = 0.0
                self._started_line = None
                bind_task(None)
            if not self._unsent:
                self._unsent_since = time.monotonic()
            self._unsent.append(result)
            waited = time.monotonic() - self._unsent_since
            if i < len(batch) - 1:
                if waited >= RESULT_FLUSH_S:
                    self._send_unsent()
            elif waited >= RESULT_FLUSH_S or not self.conn.poll(0):
                self._send_unsent()
            else:
                self._carried = True
            # Else the next batch is already here: its first start, committed with these
            # results' ledger records (max_pending=1), makes them durable, and they are sent
            # then (_run_one), one SQLite transaction fewer per task when tasks come one by one.
        if self._unsent and not self._carried:
            self._send_unsent()    # the batch's last job was taken back

    def _send_unsent(self) -> None:
        """Send the results not yet sent, once the ledger holds them."""
        self._carried = False
        if self._unsent:
            results, self._unsent = self._unsent, []
            self._send(results)

    def _send(self, results: list[list[Any]]) -> None:
        if self.app.middleware.has("child_batch_done"):
            # Before the ledger flush and the report: one wait for the batch's sends (results).
            self.app.middleware.before("child_batch_done", self.app)
        self.gate.flush()
        faults.point("after_ledger_write", self.parent_pid)
        self.conn.send_bytes(pack([RESULTS, results]))

    def _run_one(self, seq: int, value: bytes, topic: str, partition: int, offset: int,
                 force: bool, soft_limit_s: float | None, replay: bool = False) -> list[Any]:
        msg = decode(value)
        task = self.app.get_task(msg.task)
        ctx = TaskContext(task=task, message=msg, topic=topic, partition=partition, offset=offset)
        log_extra = task_extra(msg.task, msg.id, topic, partition, offset)
        bind_task(log_extra)  # lines the task's own code logs carry its fields too
        key = msg.ledger_key
        # The same key may be running in another live process (a sibling, or the previous
        # owner of a revoked partition): wait for it however long it runs, then decide.
        wait_s = min(RUNNING_LOG_S, (task.options.time_limit_s or 2 * RUNNING_LOG_S) / 2)
        logged = -RUNNING_LOG_S
        refused = self._admit(seq, task, msg, force, replay, log_extra, wait_running_s=wait_s)
        while refused == RUNNING:
            if self._carried:
                self._send_unsent()    # not held while this waits
            # The hard time limit is for the task's own run, not for this wait on its live twin.
            self.state[1] = now = time.monotonic()
            if now - logged >= RUNNING_LOG_S:
                logged = now
                logger.warning("task %s[%s] (ledger key %s) is still running in pid %s: waiting for it "
                               "instead of running a second copy", msg.task, msg.id, key, self.running_pid,
                               extra=log_extra)
            refused = self._admit(seq, task, msg, force, replay, log_extra, wait_running_s=wait_s)
        if isinstance(refused, list):
            return refused
        if self._carried:
            self._send_unsent()    # the previous batch's: before this task runs, however long it takes
        faults.point("before_task", self.parent_pid)
        if logger.isEnabledFor(logging.INFO):
            self._started_line = (time.monotonic(), msg.task, msg.id, msg.attempt, log_extra)
            if self._start_lines is None:
                self._start_lines = threading.Thread(target=self._log_long_starts, name="ktasks-start-lines",
                                                     daemon=True)
                self._start_lines.start()
        if self.transactional:
            # Every record the task and its middleware send is held, and commits with its offset.
            with self.app.capture_sends() as captured:
                out = self._run_started(seq, task, msg, ctx, soft_limit_s, log_extra)
            if captured and out[1] in (OK, DEAD):
                out.append([c.record for c in captured])
            return out
        return self._run_started(seq, task, msg, ctx, soft_limit_s, log_extra)

    def _log_long_starts(self) -> None:
        """Log "started" for a task once it has run :data:`STARTED_LINE_AFTER_S` (a thread; INFO only).

        A quick task gets a single line when it ends, which names its attempt and
        run time: a second line per task was a third of a busy worker's time at
        INFO. A task still running after a second gets its start logged, so
        what a child is busy with shows up in the log while it runs.
        """
        told: tuple[float, str, str, int, dict[str, Any]] | None = None
        while True:
            time.sleep(STARTED_LINE_AFTER_S / 4)
            running = self._started_line
            if running is None or running is told:
                continue
            since, name, task_id, attempt, log_extra = running
            ran_s = time.monotonic() - since
            if ran_s >= STARTED_LINE_AFTER_S:
                told = running
                log_line(logger, logging.INFO, "task %s[%s] started (attempt %d), running for %.1fs", name, task_id,
                         attempt, ran_s, extra=log_extra)

    def _run_started(self, seq: int, task: Any, msg: Any, ctx: TaskContext, soft_limit_s: float | None,
                     log_extra: dict[str, Any]) -> list[Any]:
        """Run an admitted task and report it (its start is in the ledger)."""
        self.app.middleware.before("before_task", ctx)
        t0 = time.perf_counter()
        result: Any = None
        error: BaseException | None = None
        try:
            if task.options.ledger_transaction:
                with self.gate.transaction(task) as conn:
                    ctx.ledger = conn
                    result = self._call_acknowledged(task, ctx, soft_limit_s)
                    faults.point("after_task", self.parent_pid)
                    self.gate.succeeded(msg, task, result, time.perf_counter() - t0, conn)
            else:
                result = self._call_acknowledged(task, ctx, soft_limit_s)
                faults.point("after_task", self.parent_pid)
                self.gate.succeeded(msg, task, result, time.perf_counter() - t0, prepared=self.transactional)
        except Exception as exc:
            error = exc
        return self._report(seq, ctx, result, error, time.perf_counter() - t0, log_extra)

    def _admit(self, seq: int, task: Any, msg: Any, force: bool, replay: bool, log_extra: dict[str, Any],
               wait_running_s: float) -> list[Any] | str | None:
        """Ask the ledger, and check the expiry: the result that ends the record here, None to run it, or
        :data:`RUNNING` when another live process still runs the key (ask again later)."""
        key = msg.ledger_key
        admission = self.gate.admit(task, msg, force=force, replay=replay, wait_running_s=wait_running_s)
        if admission.kind == "running":
            self.running_pid = admission.pid
            return RUNNING
        if admission.kind == "skip":
            logger.info("task %s[%s] already succeeded (ledger key %s): not running it again",
                        msg.task, msg.id, key, extra=log_extra)
            return [seq, SKIP, 0.0, None, None, None, None]
        if admission.kind == "poison":
            logger.error("task %s[%s] was started %d times without finishing: poison message",
                         msg.task, msg.id, task.max_starts(), extra=log_extra)
            return [seq, POISON, 0.0, None, "ktasks.errors.PoisonMessage",
                    f"started {task.max_starts()} times without finishing (max_starts)", None]
        if msg.expires is not None and not replay and time.time() > msg.expires:
            return self._expired(seq, msg, key, log_extra)
        return None

    def _report(self, seq: int, ctx: TaskContext, result: Any, error: BaseException | None, duration: float,
                log_extra: dict[str, Any]) -> list[Any]:
        """The result to send for a task that ran (``error`` None if it succeeded)."""
        task, msg, key = ctx.task, ctx.message, ctx.message.ledger_key
        self.app.middleware.after("after_task", ctx, result, error)
        if error is None:
            if logger.isEnabledFor(logging.INFO):
                shown = repr(result)
                log_line(logger, logging.INFO, "task %s[%s] succeeded in %.3fs (attempt %d): %s", msg.task, msg.id,
                         duration, msg.attempt, shown if len(shown) <= 120 else shown[:117] + "...",
                         extra=log_extra)
            return [seq, OK, duration, None, None, None, None]
        return self._failed(seq, task, msg, error, duration, key, log_extra)

    def _call_acknowledged(self, task: Any, ctx: TaskContext, soft_limit_s: float | None) -> Any:
        """Run the task; it succeeded only once every record it enqueued is acknowledged.

        Otherwise a child killed right after reporting success (the next task's hard time
        limit, the OOM killer) would lose what still sat in its producer's buffer, while
        the offset of the task that enqueued it was committed. A record the broker did not
        accept fails the task (retry or dead letter), so it is never reported finished.
        """
        with self.app.track_sends() as sent:
            result = self._call(task, ctx, soft_limit_s)
        if sent:
            timeout_s = self.app.settings.send_timeout_ms / 1000.0
            try:
                self.app.producer.flush(timeout_s)
            except KafkaError:
                pass              # told below, per record
            unsent = [f for f in sent if not f.is_done]
            if unsent:
                raise BrokerUnavailable(f"{len(unsent)} of the {len(sent)} message(s) this task enqueued were not "
                                        f"acknowledged within {self.app.settings.send_timeout_ms} ms "
                                        "(send_timeout_ms)")
            failed = [f for f in sent if f.failed()]
            if failed:
                raise EnqueueError(f"{len(failed)} of the {len(sent)} message(s) this task enqueued were not "
                                   f"accepted by Kafka: {type(failed[0].exception).__name__}: "
                                   f"{failed[0].exception}")
        return result

    @staticmethod
    def _call(task: Any, ctx: TaskContext, soft_limit_s: float | None) -> Any:
        """Run the task under its soft time limit; the timer is off before anything is recorded."""
        if not soft_limit_s:
            return task.run(ctx)     # no timer to arm: no context manager on the per-task path
        with timelimits.soft_limit(soft_limit_s):
            return task.run(ctx)

    def _expired(self, seq: int, msg: Any, key: str, log_extra: dict[str, Any]) -> list[Any]:
        """Not run: past its ``expires`` (a replay from the dead-letter topic ignores it)."""
        text = f"expired at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(msg.expires))}, not run"
        if self.ledger is not None:
            self.ledger.not_run(key, task=msg.task, state="expired", note=text)
        logger.warning("task %s[%s] %s", msg.task, msg.id, text, extra=log_extra)
        # Past intake's check (ktasks.schedule.expiry) while it waited for a child: the same end.
        return [seq, SKIP, 0.0, "expired", None, text, None]

    def _failed(self, seq: int, task: Any, msg: Any, error: BaseException, duration: float, key: str,
                log_extra: dict[str, Any]) -> list[Any]:
        cause = retries.cause_of(error)
        tb = "".join(traceback.format_exception(type(cause), cause, cause.__traceback__))
        exc_type = exception_name(cause)
        self.gate.failed(msg, task.name, cause, tb)
        decision = retries.decide(task, error, msg.attempt)
        if decision.retry:
            delay = decision.delay_s
            logger.warning("task %s[%s] failed in %.3fs (attempt %d, %s: %s); retry %d/%d in %.1fs", msg.task,
                           msg.id, duration, msg.attempt, exc_type, cause, msg.attempt + 1, task.max_retries(), delay,
                           extra=log_extra)
            return [seq, RETRY, duration, delay, exc_type, str(cause), tb]
        reason = decision.reason
        logger.error("task %s[%s] failed in %.3fs (attempt %d, %s: %s); %s, sending to the dead-letter topic",
                     msg.task, msg.id, duration, msg.attempt, exc_type, cause, reason, extra=log_extra)
        return [seq, DEAD, duration, reason, exc_type, str(cause), tb]


def child_main(app_spec: str, index: int, conn: Connection, state: Any, parent_pid: int,
               loglevel: str, log_format: str, faults_spec: str | None,
               overrides: dict[str, Any] | None = None, claim_lock: Any = None) -> None:
    """Entry point of a child process (spawned, so it imports the app afresh)."""
    _die_with_parent()
    # The parent decides when children stop; a Ctrl-C or a SIGTERM to the whole
    # process group must not kill a task half way.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGALRM, timelimits.on_soft_limit)
    configure_logging(loglevel, log_format, process_name=f"child-{index}")
    faults.configure(faults_spec)
    try:
        app = load_app(app_spec)
        if overrides:
            # Settings the worker was started with (CLI flags) win over the module's.
            app.settings = app.settings.replace(**overrides)
        app.middleware.before("child_started", app)
        if any(t.is_async for t in app.tasks.values()):
            from .aio import AsyncChild  # async def tasks: an event loop in this child

            AsyncChild(app, index, conn, state, parent_pid).serve()
        else:
            Child(app, index, conn, state, parent_pid, claim_lock).serve()
        app.middleware.after("child_stopping", app)
    except Exception:
        logger.exception("child %d crashed", index)
        raise
    finally:
        conn.close()
