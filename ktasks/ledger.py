"""The idempotency ledger: a SQLite record of every execution on this host.

Kafka redelivers. After a crash or a rebalance the new owner of a partition
resumes from the last committed offset, so records that finished but were not
yet committed arrive again. Before a worker runs a task it asks the ledger
(:meth:`Ledger.begin`) under the task's name and idempotency key (the
caller's ``idempotency_key``, else the task id). A key names an execution of
*one task*: the same key given to two tasks names two executions.

* ``skip``: the key is recorded as succeeded; do not run it, count the offset
  as finished.
* ``poison``: the key was started ``max_starts`` times and never finished
  (every attempt took its process down); it is marked ``poisoned``;
  dead-letter it.
* ``run``: a start is recorded, committed, and the task runs.
* ``running``: another process on this host that still runs holds the key's
  start (told apart by pid and process start time, so a reused pid does not
  count); nothing is recorded, the caller waits and asks again. A live start
  is never a crash: it neither counts toward ``max_starts`` nor lets a second
  copy run.

An entry moves ``started -> succeeded``, ``started -> failed`` or
``started -> poisoned``. A failed key runs again (the retry path owns the
attempt count), so a recorded failure counts as a finish and resets the count
of unfinished starts. A poisoned key stays poison until it is replayed.

Several processes (the worker parent and every prefork child) use one file at
once: WAL mode so readers never block the writer, a busy timeout so writers
queue instead of failing, and ``BEGIN IMMEDIATE`` for every write transaction
this module starts, so a transaction never has to upgrade a read lock to a
write lock (in WAL mode such an upgrade fails with ``SQLITE_BUSY`` at once,
without waiting). See docs/ledger.md.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import re
import socket
import sqlite3
import threading
import time
import traceback as _traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._proc import pid_alive, start_ticks
from .errors import LedgerError, exception_name
from .ledger_lock import WriterLock
from .ledger_schema import (
    APPLICATION_ID,
    BEGIN_DEFERRED,
    BEGIN_IMMEDIATE,
    COLUMNS,
    COMMIT,
    ROLLBACK,
    SCHEMA_VERSION,
    TABLE,
    immediate,
    is_busy,
    ledger_error,
    migrate,
)
from .message import pack, unpack

if TYPE_CHECKING:
    from .app import App

logger = logging.getLogger(__name__)

__all__ = ["Ledger", "Entry", "Decision", "Kind", "Pruner", "SCHEMA_VERSION", "TABLE", "APPLICATION_ID", "STATES",
           "check_ledger"]

STARTED, SUCCEEDED, FAILED, POISONED = "started", "succeeded", "failed", "poisoned"
#: Never ran: revoked (``app.revoke``) or past its ``expires`` when a worker took it (see :meth:`Ledger.not_run`).
REVOKED, EXPIRED = "revoked", "expired"
#: Succeeded in a transactional worker, whose Kafka transaction (the task's records and its offset) has not
#: committed yet: the parent turns it into ``succeeded`` after the commit (:meth:`Ledger.confirm`), or into
#: ``failed`` after an abort (:meth:`Ledger.release`). Left by a worker that died, it runs again.
PREPARED = "prepared"
#: Every state, in the order tools show them.
STATES = (STARTED, PREPARED, SUCCEEDED, FAILED, POISONED, REVOKED, EXPIRED)
#: States that end an execution: prunable once old enough.
FINISHED_STATES = (SUCCEEDED, FAILED, POISONED, REVOKED, EXPIRED)

_HOST = socket.gethostname()

_SELECT = f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE key = ? AND task = ?"
_SELECT_KEY = f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE key = ? ORDER BY task"
# A first start, the usual case: one statement instead of a read and then a write, while the
# begin holds the file's write lock, which every other process on the host is waiting for
# (3 to 5 % more no-op tasks a second at -c 2). Inserts nothing if the key has an entry.
_INSERT_FIRST_START = (
    f"INSERT INTO {TABLE} (key, task, state, attempt, starts, total_starts, host, pid, pid_start, started_at, "
    f"updated_at) VALUES (?, ?, '{STARTED}', ?, 1, 1, ?, ?, ?, ?, ?) ON CONFLICT (key, task) DO NOTHING"
)
# A new start clears the previous finish (its time, result) but keeps the last failure's
# exception: when a key ends up poison, the failure before the crashes is the best clue.
_UPDATE_START = (
    f"UPDATE {TABLE} SET state = '{STARTED}', attempt = ?, starts = ?, "
    "total_starts = total_starts + 1, host = ?, pid = ?, pid_start = ?, started_at = ?, finished_at = NULL, "
    "duration_s = NULL, result = NULL, note = NULL, updated_at = ? WHERE key = ? AND task = ?"
)
# Finishes are upserts: a finish without a start (eager runs, a start lost with its
# process) still leaves a record. A finish resets ``starts``: it counts starts since
# the last finish, which is what poison detection needs.
_SUCCEEDED = (
    f"INSERT INTO {TABLE} (key, task, state, finished_at, duration_s, result, note, updated_at) "
    f"VALUES (?, ?, '{SUCCEEDED}', ?, ?, ?, ?, ?) "
    f"ON CONFLICT(key, task) DO UPDATE SET state = '{SUCCEEDED}', starts = 0, "
    "finished_at = excluded.finished_at, duration_s = excluded.duration_s, result = excluded.result, "
    "note = excluded.note, updated_at = excluded.updated_at"
)
_PREPARED = _SUCCEEDED.replace(f"'{SUCCEEDED}'", f"'{PREPARED}'")
_CONFIRM = f"UPDATE {TABLE} SET state = '{SUCCEEDED}' WHERE key = ? AND task = ? AND state = '{PREPARED}'"
_RELEASE = (
    f"UPDATE {TABLE} SET state = '{FAILED}', note = ?, updated_at = ? WHERE key = ? AND task = ? "
    f"AND state = '{PREPARED}'"
)
_FAILED = (
    f"INSERT INTO {TABLE} (key, task, state, finished_at, exc_type, exc_message, traceback, updated_at) "
    f"VALUES (?, ?, '{FAILED}', ?, ?, ?, ?, ?) "
    f"ON CONFLICT(key, task) DO UPDATE SET state = '{FAILED}', starts = 0, "
    "finished_at = excluded.finished_at, duration_s = excluded.finished_at - started_at, result = NULL, "
    "note = NULL, exc_type = excluded.exc_type, exc_message = excluded.exc_message, "
    "traceback = excluded.traceback, updated_at = excluded.updated_at "
    # A success is final: a failure reported after it (an exception such as a soft time
    # limit landing just after the commit, or a duplicate run losing) must not undo it,
    # or the key would run again.
    f"WHERE state != '{SUCCEEDED}'"
)
# A record a worker took and did not run (revoked, expired). Never over a success: the
# key ran, and the ledger's word on that is what keeps it from running again.
_NOT_RUN = (
    f"INSERT INTO {TABLE} (key, task, state, finished_at, note, updated_at) VALUES (?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(key, task) DO UPDATE SET state = excluded.state, starts = 0, "
    "finished_at = excluded.finished_at, note = excluded.note, updated_at = excluded.updated_at "
    f"WHERE state != '{SUCCEEDED}'"
)
# Marks a key poison when begin() decides so: a redelivery of the same record is
# dead-lettered again at once, while a replay (begin(replay=True)) starts afresh.
_POISONED = (
    f"UPDATE {TABLE} SET state = '{POISONED}', finished_at = ?, updated_at = ? WHERE key = ? AND task = ?"
)
# Only finished entries are pruned: an unfinished one is the evidence that makes a
# poison message poison. ``finished_at`` is NULL while started, and indexed.
_PRUNE = (
    f"DELETE FROM {TABLE} WHERE rowid IN (SELECT rowid FROM {TABLE} "
    f"WHERE finished_at < ? AND state IN ({', '.join(repr(s) for s in FINISHED_STATES)}) LIMIT ?)"
)


class Kind(str, enum.Enum):
    """What :meth:`Ledger.begin` decided. A ``str``, so ``decision.kind == "run"`` works."""

    RUN = "run"
    SKIP = "skip"
    POISON = "poison"
    #: Started by another process on this host that still runs: nothing was recorded.
    RUNNING = "running"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class Entry:
    """One key's record, as stored.

    ``state`` is one of :data:`STATES`. ``starts`` counts starts since the
    last success or failure (kept when poisoned); ``total_starts`` counts
    every start. ``exc_*`` and ``traceback`` describe
    the last failure and survive a later start. ``result`` is msgpack bytes;
    :meth:`result_value` decodes it.
    """

    key: str
    task: str
    state: str
    attempt: int
    starts: int
    total_starts: int
    host: str | None
    pid: int | None
    started_at: float | None
    finished_at: float | None
    duration_s: float | None
    result: bytes | None
    note: str | None
    exc_type: str | None
    exc_message: str | None
    traceback: str | None
    updated_at: float
    #: Start time of process ``pid`` (clock ticks since boot, Linux), so a reused pid is told apart.
    pid_start: int | None = None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED_STATES

    def result_value(self) -> Any:
        """The task's return value, decoded (``None`` if none was stored)."""
        return None if self.result is None else unpack(self.result)

    def as_dict(self) -> dict[str, Any]:
        """Plain values, for JSON output: the result decoded, bytes never."""
        d = {name: getattr(self, name) for name in COLUMNS}
        try:
            d["result"] = self.result_value()
        except Exception as exc:  # a result written by a newer ktasks, say
            d["result"] = None
            d["note"] = f"result not decodable: {exc}"
        return d


@dataclass(frozen=True)
class Decision:
    """The answer of :meth:`Ledger.begin`.

    ``entry`` is the key's record as it was *before* this call (``None`` for
    a new key); ``starts`` is the number of unfinished starts now, including
    the one just recorded when ``kind`` is ``run``.
    """

    kind: Kind
    entry: Entry | None
    starts: int

    @property
    def run(self) -> bool:
        return self.kind is Kind.RUN


class Ledger:
    """One process's handle on the ledger file.

    Open one per process (a connection must not cross ``fork()``) and use it
    from the thread that opened it. Creating it creates the directory, the
    file and the schema if needed; any number of processes may open the same
    file at once.

    Writes of finishes (:meth:`succeeded` without ``conn``, :meth:`failed`)
    are buffered and made durable by :meth:`flush`, or by a :meth:`begin`
    once ``max_pending`` are buffered or when the key begun has one; call
    :meth:`flush` before acknowledging anything. Starts and transactional
    successes are committed before the call returns.
    """

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_ms: int = 30000,
                 max_result_bytes: int = 1 << 20, max_pending: int = 256) -> None:
        self.path = Path(os.path.expanduser(os.fspath(path)))
        self.busy_timeout_ms = busy_timeout_ms
        self.max_result_bytes = max_result_bytes
        self.max_pending = max_pending
        self._pid = os.getpid()
        self._own_start = start_ticks(self._pid)
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._pending_keys: set[tuple[str, str]] = set()
        self._in_user_tx = False
        self._tx_changes = 0
        self._closed = False
        self._writer = WriterLock(self.path)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            # isolation_level=None: the driver opens no transactions of its own; we
            # issue BEGIN IMMEDIATE/DEFERRED explicitly and know which one we hold.
            self._conn = sqlite3.connect(str(self.path), timeout=busy_timeout_ms / 1000.0,
                                         isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise ledger_error(f"cannot open {self.path}", exc) from exc
        try:
            self._configure()
            migrate(self._conn, self.path)
        except sqlite3.Error as exc:  # a file that is no database fails its first read here
            self._conn.close()
            raise ledger_error(f"cannot open {self.path}", exc) from exc
        except BaseException:
            self._conn.close()
            raise
        self._conn.set_authorizer(self._authorize)

    def _configure(self) -> None:
        conn = self._conn
        conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout_ms)}")
        deadline = time.monotonic() + self.busy_timeout_ms / 1000.0
        while True:
            # Switching a new file to WAL needs a moment of exclusive access; when
            # several processes create the file at once, some see "locked".
            try:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                break
            except sqlite3.OperationalError as exc:
                if not is_busy(exc) or time.monotonic() > deadline:
                    raise ledger_error(f"cannot enable WAL on {self.path}", exc) from exc
                time.sleep(0.01)
        if str(mode).lower() != "wal":
            raise LedgerError(f"ledger: {self.path} cannot use WAL mode (got {mode!r}); "
                              "is it on a network file system?")
        # NORMAL in WAL mode: a commit survives a crash of the process (what the
        # ledger guards against); only a power loss can undo the last commits.
        conn.execute("PRAGMA synchronous = NORMAL")

    # -- construction helpers ---------------------------------------------------
    @staticmethod
    def default_path(group_id: str) -> Path:
        """``$XDG_STATE_HOME/ktasks/<group>.ledger.sqlite3`` (``~/.local/state`` by default)."""
        state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", group_id) or "_"
        return Path(state) / "ktasks" / f"{safe}.ledger.sqlite3"

    @staticmethod
    def path_for_app(app: App) -> Path:
        """The ledger file an app's workers use: ``ledger_path``, else :meth:`default_path`."""
        configured = app.settings.ledger_path
        if configured:
            return Path(os.path.expanduser(configured))
        return Ledger.default_path(app.group_id)

    @classmethod
    def for_app(cls, app: App) -> Ledger:
        """Open the ledger of an app (see :meth:`path_for_app`)."""
        return cls(cls.path_for_app(app))

    # -- the worker's protocol ----------------------------------------------------
    def begin(self, key: str, task: str, attempt: int, max_starts: int, *, host: str | None = None,
              pid: int | None = None, wait_running_s: float = 0.0, replay: bool = False,
              force: bool = False) -> Decision:
        """Decide whether to run ``key``, and record the start if so.

        Returns a :class:`Decision` of kind ``skip`` (recorded as succeeded),
        ``poison`` (``max_starts`` unfinished starts already, ``0`` meaning no
        limit, or marked poisoned before; the entry is marked ``poisoned``),
        ``run`` (a start is committed before this returns) or ``running``.

        ``running`` (nothing recorded): the key's start is held by another
        process on this host that still runs (the same key enqueued twice and
        picked up by two children, or redelivered to a new owner while the old
        one still runs it). A start whose process is alive is never counted as
        a crash and never a reason to run a second copy; the caller waits and
        asks again. Processes are told apart by pid and start time, so a pid
        reused after a crash does not pass for the process that crashed.

        ``wait_running_s``: how long to wait here for such a start to finish
        before deciding, so the duplicate is skipped (or run, if the first one
        failed or died) without the caller asking again. 0 (the default)
        answers ``running`` at once.

        ``replay`` (a record republished by ``ktasks dlq replay``): a key
        marked poisoned runs again, its count of unfinished starts beginning
        afresh; the operator has fixed the cause. A succeeded key is still
        skipped. ``force`` (``replay --force``): run whatever the entry says.
        """
        self._check_usable("begin")
        if self._in_user_tx:
            raise LedgerError("ledger: begin() inside transaction()")
        self._ensure_idle()
        host = _HOST if host is None else host
        pid = os.getpid() if pid is None else pid
        deadline = time.monotonic() + wait_running_s
        delay = 0.01
        while True:
            decision, running = self._begin_once(key, task, attempt, max_starts, host, pid,
                                                 wait=time.monotonic() < deadline, replay=replay,
                                                 force=force)
            if decision is not None:
                return decision
            logger.debug("ledger: %s is running in pid %s; waiting", key, running)
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _begin_once(self, key: str, task: str, attempt: int, max_starts: int, host: str, pid: int,
                    wait: bool, replay: bool, force: bool) -> tuple[Decision | None, int | None]:
        conn = self._conn
        now = time.time()
        pid_start = self._own_start if pid == self._pid else start_ticks(pid)
        try:
            with self._writer:
                decision, carried, running = self._begin_in_tx(conn, key, task, attempt, host, pid, pid_start,
                                                               now, max_starts, wait, replay, force)
        except sqlite3.Error as exc:
            raise ledger_error(f"begin({key!r})", exc) from exc
        if decision is None:
            return None, running
        if carried:
            self._clear_pending()
        if decision.kind is Kind.POISON:
            logger.warning("ledger: %s (%s) started %d times without finishing: poison",
                           key, task, decision.starts)
        elif decision.kind is Kind.SKIP:
            logger.debug("ledger: %s already succeeded; skipping", key)
        return decision, None

    def _begin_in_tx(self, conn: sqlite3.Connection, key: str, task: str, attempt: int, host: str, pid: int,
                     pid_start: int | None, now: float, max_starts: int, wait: bool, replay: bool,
                     force: bool) -> tuple[Decision | None, bool, int | None]:
        """:meth:`_begin_once`'s transaction: (decision, or None to wait on ``running``; carried)."""
        conn.execute(BEGIN_IMMEDIATE)
        try:
            # Buffered finishes wait for flush(): written together they touch few
            # pages, and a start stays a small transaction. They ride along here
            # only when this key has one (it must be seen) or the buffer is full.
            carried = bool(self._pending) and ((key, task) in self._pending_keys
                                               or len(self._pending) >= self.max_pending)
            if carried:
                self._write_pending()
            first = conn.execute(_INSERT_FIRST_START, (key, task, attempt, host, pid, pid_start, now, now))
            if first.rowcount == 1:
                conn.execute(COMMIT)
                return Decision(Kind.RUN, None, 1), carried, None
            # The key has an entry (this transaction holds the write lock: it stays there).
            entry = Entry(*conn.execute(_SELECT, (key, task)).fetchone())
            if force or (replay and entry.state == POISONED):
                conn.execute(_UPDATE_START, (attempt, 1, host, pid, pid_start, now, now, key, task))
                decision = Decision(Kind.RUN, entry, 1)
            elif entry.state == SUCCEEDED:
                decision = Decision(Kind.SKIP, entry, 0)
            elif entry.state == POISONED:
                decision = Decision(Kind.POISON, entry, entry.starts)
            elif (entry.state in (STARTED, PREPARED) and entry.host == host and entry.pid
                  and entry.pid not in (pid, os.getpid()) and pid_alive(entry.pid, entry.pid_start)):
                # Checked before poison: a start whose process still runs is no crash, and
                # never a reason to run a second copy, however long it runs.
                # Write our buffered finishes before waiting, so two processes waiting
                # for each other's buffered successes cannot deadlock.
                if not carried:
                    self._write_pending()
                conn.execute(COMMIT)
                self._clear_pending()
                if wait:
                    return None, False, entry.pid
                return Decision(Kind.RUNNING, entry, entry.starts), False, None
            elif entry.state == STARTED and 0 < max_starts <= entry.starts:
                conn.execute(_POISONED, (now, now, key, task))
                decision = Decision(Kind.POISON, entry, entry.starts)
            else:
                conn.execute(_UPDATE_START, (attempt, entry.starts + 1, host, pid, pid_start, now, now, key, task))
                decision = Decision(Kind.RUN, entry, entry.starts + 1)
            conn.execute(COMMIT)
        except BaseException:
            if conn.in_transaction:
                conn.execute(ROLLBACK)
            raise
        return decision, carried, None

    @contextlib.contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """A transaction for a bound task's own writes and its success record.

        Yields the ledger's connection (the worker hands it to the task as
        ``ctx.ledger``); call :meth:`succeeded` with ``conn=`` inside the block.
        Leaving the block commits the task's writes and the success together;
        an exception rolls both back. The task must not end the transaction
        itself: ``COMMIT``, ``ROLLBACK`` and ``BEGIN`` are refused inside the
        block (savepoints are fine).

        The transaction is DEFERRED: no lock is held until the first write, so
        a long task that never writes does not stall other processes. A task
        that *reads, then writes* may get ``database is locked`` at its first
        write if another process committed in between (SQLite cannot upgrade a
        stale snapshot); the task then fails, with nothing committed, and is
        retried as its policy says. Tasks that read-then-write under contention should write
        first, or run with ``immediate=True``, which takes the write lock at
        once and holds it for the whole task.
        """
        self._check_usable("transaction")
        if self._in_user_tx:
            raise LedgerError("ledger: transaction() cannot be nested")
        self._ensure_idle()
        conn = self._conn
        try:
            conn.execute(BEGIN_IMMEDIATE if immediate else BEGIN_DEFERRED)
        except sqlite3.Error as exc:
            raise ledger_error("cannot begin a transaction", exc) from exc
        self._tx_changes = conn.total_changes
        self._in_user_tx = True
        committing = False
        try:
            yield conn
            self._in_user_tx = False
            committing = True
            conn.execute(COMMIT)
        except BaseException as exc:
            # Also reached by an exception from a signal handler (a soft time limit)
            # between the task's return and the commit: never leave it open.
            self._in_user_tx = False
            if conn.in_transaction:
                conn.execute(ROLLBACK)
            if committing and isinstance(exc, sqlite3.Error):
                raise ledger_error("cannot commit a task's transaction", exc) from exc
            raise

    def _authorize(self, action: int, arg1: str | None, arg2: str | None, db: str | None,
                   source: str | None) -> int:
        # Runs when SQLite prepares a statement. Inside transaction(), a task's own
        # COMMIT (or ``with conn:``) would commit its writes without the success
        # record, breaking exactly-once; refuse it loudly instead.
        if self._in_user_tx and action == sqlite3.SQLITE_TRANSACTION:
            logger.error("ledger: a task tried to %s the ledger transaction; the worker commits it "
                         "together with the success record", arg1 or "end")
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    def succeeded(self, key: str, result: Any, duration_s: float, *, task: str,
                  conn: sqlite3.Connection | None = None, prepared: bool = False) -> None:
        """Record that ``task``'s execution ``key`` succeeded, returning ``result``.

        With ``conn`` (inside :meth:`transaction`) the record joins that
        transaction and commits with it. Without, it is buffered until
        :meth:`flush` (see the class docs). A result that msgpack cannot
        encode, or larger than ``max_result_bytes``, is stored as ``None``
        with a note; that never fails the task.

        ``prepared``: recorded as :data:`PREPARED`, a success whose Kafka
        transaction is still open (a transactional worker).
        """
        self._check_usable("succeeded")
        encoded, note = self._encode_result(key, result)
        params = (key, task, time.time(), float(duration_s), encoded, note, time.time())
        if conn is None:
            self._buffer((key, task), _PREPARED if prepared else _SUCCEEDED, params)
            return
        self._succeeded_in_tx(conn, key, params)

    def _succeeded_in_tx(self, conn: sqlite3.Connection, key: str, params: tuple[Any, ...]) -> None:
        # Our own statements run with the guard off: the authorizer must only see the task's.
        guarded, self._in_user_tx = self._in_user_tx, False
        try:
            if not conn.in_transaction:
                raise LedgerError("ledger: succeeded(conn=...) outside an open transaction")
            try:
                conn.execute(_SUCCEEDED, params)
            except sqlite3.OperationalError as exc:
                # BUSY here means this transaction holds no write lock, so the task wrote
                # nothing through the ledger: it only read, and its snapshot went stale.
                # With nothing to keep atomic, record the success on its own and hand the
                # block a fresh, empty transaction to commit.
                if not is_busy(exc) or conn is not self._conn or conn.total_changes != self._tx_changes:
                    raise ledger_error(f"succeeded({key!r})", exc) from exc
                conn.execute(ROLLBACK)
                try:
                    conn.execute(BEGIN_IMMEDIATE)
                    conn.execute(_SUCCEEDED, params)
                    conn.execute(COMMIT)
                except sqlite3.Error as exc2:
                    if conn.in_transaction:
                        conn.execute(ROLLBACK)
                    raise ledger_error(f"succeeded({key!r})", exc2) from exc2
                finally:
                    conn.execute(BEGIN_DEFERRED)
                    self._tx_changes = conn.total_changes
            except sqlite3.Error as exc:
                raise ledger_error(f"succeeded({key!r})", exc) from exc
        finally:
            self._in_user_tx = guarded

    def _encode_result(self, key: str, result: Any) -> tuple[bytes | None, str | None]:
        try:
            encoded = pack(result)
        except (TypeError, ValueError, OverflowError) as exc:
            logger.info("ledger: result of %s not stored: %s", key, exc)
            return None, f"result not encodable: {exc}"
        if len(encoded) > self.max_result_bytes:
            return None, f"result not stored: {len(encoded)} bytes > max_result_bytes {self.max_result_bytes}"
        return encoded, None

    def confirm(self, keys: Iterable[tuple[str, str]]) -> None:
        """The transaction of these ``(key, task)`` :data:`PREPARED` successes committed: they succeeded."""
        self._update_prepared(_CONFIRM, [(key, task) for key, task in keys], "confirm")

    def release(self, keys: Iterable[tuple[str, str]], note: str) -> None:
        """The transaction of these :data:`PREPARED` successes aborted: they run again when delivered again."""
        now = time.time()
        self._update_prepared(_RELEASE, [(note, now, key, task) for key, task in keys], "release")

    def _update_prepared(self, sql: str, rows: list[tuple[Any, ...]], what: str) -> None:
        self._check_usable(what)
        if not rows:
            return
        self._ensure_idle()
        try:
            with self._writer, immediate(self._conn):
                self._conn.executemany(sql, rows)
        except sqlite3.Error as exc:
            raise ledger_error(f"{what}({len(rows)} keys)", exc) from exc

    def failed(self, key: str, exc: BaseException, tb: str | None = None, *, task: str) -> None:
        """Record that this attempt of ``task``'s ``key`` raised ``exc`` (buffered, like :meth:`succeeded`).

        ``tb`` defaults to the traceback carried by ``exc``. A failed key runs
        again when it comes back (the retry path decides whether it does).
        """
        self._check_usable("failed")
        if tb is None and exc.__traceback__ is not None:
            tb = "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))
        try:
            message = str(exc)
        except Exception:  # a broken __str__ must not lose the record
            message = repr(exc)
        now = time.time()
        self._buffer((key, task), _FAILED, (key, task, now, exception_name(exc), message, tb, now))

    def not_run(self, key: str, *, task: str, state: str, note: str | None = None) -> None:
        """Record that ``task``'s execution ``key`` was taken and not run: ``state`` is ``revoked`` or ``expired``.

        Written at once (not buffered): the worker commits the record's offset
        right after, and the ledger is the only trace that it was not run. A
        key recorded as succeeded keeps that state.
        """
        self._check_usable("not_run")
        self._ensure_idle()
        if state not in (REVOKED, EXPIRED):
            raise LedgerError(f"ledger: not_run state must be {REVOKED!r} or {EXPIRED!r}, got {state!r}")
        now = time.time()
        try:
            with self._writer, immediate(self._conn):
                self._write_pending()
                self._conn.execute(_NOT_RUN, (key, task, state, now, note, now))
        except sqlite3.Error as exc:
            raise ledger_error(f"not_run({key!r})", exc) from exc
        self._clear_pending()

    def _buffer(self, ident: tuple[str, str], sql: str, params: tuple[Any, ...]) -> None:
        self._pending.append((sql, params))
        self._pending_keys.add(ident)

    def _write_pending(self) -> None:
        for sql, params in self._pending:
            self._conn.execute(sql, params)

    def _clear_pending(self) -> None:
        self._pending.clear()
        self._pending_keys.clear()

    def flush(self) -> None:
        """Make every buffered finish durable, in one transaction.

        On failure the records stay buffered (and this raises
        :class:`~ktasks.errors.LedgerError`), so nothing is lost silently.
        """
        self._check_usable("flush")
        if not self._pending:
            return
        if self._in_user_tx:
            raise LedgerError("ledger: flush() inside transaction()")
        self._ensure_idle()
        try:
            with self._writer, immediate(self._conn):
                self._write_pending()
        except sqlite3.Error as exc:
            raise ledger_error("flush", exc) from exc
        self._clear_pending()

    @property
    def pending(self) -> int:
        """Buffered finishes not yet written."""
        return len(self._pending)

    # -- reading and maintenance --------------------------------------------------
    def verify(self) -> None:
        """Prove the file usable by this process: intact (``PRAGMA quick_check``) and writable.

        Raises :class:`~ktasks.errors.LedgerError` naming the file and what is
        wrong. The worker parent calls it (through :func:`check_ledger`) before
        it starts children, so a bad file stops the worker with one clear error
        instead of failing in every child. ``quick_check`` reads every page and
        checks the indexes: it takes seconds on a large file (docs/ledger.md).
        """
        self._check_usable("verify")
        conn = self._conn
        try:
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path} {_what_is_wrong(exc)}") from exc
        if problems != ["ok"]:
            raise LedgerError(f"ledger {self.path} is corrupt ({'; '.join(problems)}): "
                              f"{_CORRUPT_ADVICE}")
        try:
            # A write that changes nothing: rewriting the version still takes the write lock and
            # writes the header page, which is what a read-only file or mount refuses.
            with immediate(conn):
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as exc:
            raise LedgerError(f"ledger {self.path} {_what_is_wrong(exc)}") from exc

    def get(self, key: str, *, task: str) -> Entry | None:
        """The record of ``task``'s ``key``, or ``None``. Flushes first if it has a buffered finish."""
        self._check_usable("get")
        if (key, task) in self._pending_keys and not self._in_user_tx:
            self.flush()
        try:
            row = self._conn.execute(_SELECT, (key, task)).fetchone()
        except sqlite3.Error as exc:
            raise ledger_error(f"get({key!r}, task={task!r})", exc) from exc
        return None if row is None else Entry(*row)

    def find(self, key: str) -> list[Entry]:
        """Every task's record under ``key`` (tools look a key up without knowing its task)."""
        self._check_usable("find")
        if self._pending and not self._in_user_tx:
            self.flush()
        try:
            rows = self._conn.execute(_SELECT_KEY, (key,)).fetchall()
        except sqlite3.Error as exc:
            raise ledger_error(f"find({key!r})", exc) from exc
        return [Entry(*row) for row in rows]

    def stats(self) -> dict[str, Any]:
        """Counts by state, total, file sizes and the oldest times (a full scan: for tools, not hot paths)."""
        self._check_usable("stats")
        if self._pending and not self._in_user_tx:
            self.flush()
        conn = self._conn
        try:
            by_state = {state: 0 for state in STATES}
            for state, count in conn.execute(f"SELECT state, count(*) FROM {TABLE} GROUP BY state"):
                by_state[state] = count
            oldest_finished = conn.execute(f"SELECT min(finished_at) FROM {TABLE}").fetchone()[0]
            oldest_started = conn.execute(
                f"SELECT min(started_at) FROM {TABLE} WHERE state = '{STARTED}'").fetchone()[0]
            max_starts_seen = conn.execute(
                f"SELECT max(starts) FROM {TABLE} WHERE state = '{STARTED}'").fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        except sqlite3.Error as exc:
            raise ledger_error("stats", exc) from exc
        oldest = min((t for t in (oldest_finished, oldest_started) if t is not None), default=None)
        return {
            "path": str(self.path),
            "schema_version": version,
            "total": sum(by_state.values()),
            "by_state": by_state,
            "size_bytes": _size(self.path),
            "wal_bytes": _size(Path(str(self.path) + "-wal")),
            "oldest_entry_at": oldest,
            "oldest_finished_at": oldest_finished,
            "oldest_unfinished_at": oldest_started,
            "most_unfinished_starts": max_starts_seen or 0,
        }

    def prune(self, older_than_s: float, batch: int = 5000, *, pause_s: float = 0.005,
              stop: Callable[[], bool] | None = None) -> int:
        """Delete finished entries that finished more than ``older_than_s`` ago; returns how many.

        Deletes ``batch`` rows per transaction and pauses ``pause_s`` between
        transactions, so task processing never waits long for the write lock.
        Unfinished entries are kept (they are how poison is recognised);
        :meth:`forget` removes one. ``stop`` is polled between batches.
        """
        self._check_usable("prune")
        if self._in_user_tx:
            raise LedgerError("ledger: prune() inside transaction()")
        self.flush()
        cutoff = time.time() - older_than_s
        total = 0
        conn = self._conn
        while True:
            try:
                with immediate(conn):
                    deleted = conn.execute(_PRUNE, (cutoff, batch)).rowcount
            except sqlite3.Error as exc:
                raise ledger_error("prune", exc) from exc
            total += deleted
            if deleted < batch or (stop is not None and stop()):
                break
            time.sleep(pause_s)  # let queued writers take the lock between batches
        if total:
            logger.info("ledger: pruned %d entries finished before %s", total, time.ctime(cutoff))
        return total

    def forget(self, key: str, *, task: str) -> bool:
        """Delete the record of ``task``'s ``key`` whatever its state, so its next delivery runs as if new."""
        self._check_usable("forget")
        if (key, task) in self._pending_keys:
            self.flush()
        try:
            cur = self._conn.execute(f"DELETE FROM {TABLE} WHERE key = ? AND task = ?", (key, task))
        except sqlite3.Error as exc:
            raise ledger_error(f"forget({key!r}, task={task!r})", exc) from exc
        return cur.rowcount > 0

    def close(self) -> None:
        """Flush buffered finishes and close the connection. Safe to call twice."""
        if self._closed:
            return
        if os.getpid() != self._pid:
            # Inherited across fork: the parent owns the connection; touching it here
            # could corrupt its state, so drop it without a word to SQLite.
            self._closed = True
            return
        try:
            if self._pending and not self._in_user_tx:
                self.flush()
        finally:
            self._closed = True
            self._conn.close()
            self._writer.close()

    def _ensure_idle(self) -> None:
        # An exception raised by a signal handler at the wrong instant (between a
        # statement and our ROLLBACK) could leave a transaction open; the next write
        # would then fail with "cannot start a transaction within a transaction".
        if self._conn.in_transaction and not self._in_user_tx:
            logger.warning("ledger: rolling back a transaction left open by an interrupted call")
            self._conn.execute(ROLLBACK)

    def _check_usable(self, what: str) -> None:
        if self._closed:
            raise LedgerError(f"ledger: {what}() on a closed ledger")
        if os.getpid() != self._pid:
            raise LedgerError(f"ledger: opened in pid {self._pid}, used in pid {os.getpid()} after fork; "
                              "open a Ledger in each process")

    def __enter__(self) -> Ledger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<Ledger {self.path}>"


_CORRUPT_ADVICE = ("restore it from a backup, or move it away so the worker starts an empty one "
                   "(tasks that finished before may then run again)")


def _what_is_wrong(exc: BaseException) -> str:
    """A reason for an operator, from a SQLite error while checking or opening a ledger."""
    cause = exc.__cause__ if isinstance(exc, LedgerError) and exc.__cause__ is not None else exc
    code = getattr(cause, "sqlite_errorcode", None)  # Python 3.11+
    primary = code & 0xFF if code is not None else None
    text = str(cause).lower()
    if primary == 8 or "readonly" in text or "read-only" in text:  # SQLITE_READONLY
        return (f"is read-only for this process ({cause}): the worker records a start before every "
                f"task; make the file, its -wal and -shm files and its folder writable by uid {os.getuid()}")
    if primary in (11, 26) or "malformed" in text or "not a database" in text:  # CORRUPT, NOTADB
        return f"is corrupt or not a SQLite file ({cause}): {_CORRUPT_ADVICE}"
    return f"cannot be used: {cause}"


def check_ledger(path: str | os.PathLike[str]) -> None:
    """Open the ledger at ``path`` (creating it if missing) and :meth:`~Ledger.verify` it, then close it.

    Raises :class:`~ktasks.errors.LedgerError` whose message names the file
    and what is wrong with it (cannot be opened, corrupt, read-only).
    """
    try:
        ledger = Ledger(path)
    except LedgerError as exc:
        shown = Path(os.path.expanduser(os.fspath(path)))
        raise LedgerError(f"ledger {shown} {_what_is_wrong(exc)}") from exc
    try:
        ledger.verify()
    finally:
        ledger.close()


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


# -- retention --------------------------------------------------------------------------
class Pruner(threading.Thread):
    """Daemon thread that prunes finished entries older than ``retention_s`` every ``interval_s``.

    The worker parent starts one. It opens its own connection (in the thread)
    and deletes in small batches, so children writing starts and finishes
    wait at most one batch. Errors are logged and retried next round.
    """

    def __init__(self, path: str | os.PathLike[str], retention_s: float, *, interval_s: float = 600.0,
                 batch: int = 5000, busy_timeout_ms: int = 30000) -> None:
        super().__init__(name="ktasks-ledger-pruner", daemon=True)
        self.path = path
        self.retention_s = retention_s
        self.interval_s = interval_s
        self.batch = batch
        self.busy_timeout_ms = busy_timeout_ms
        self.pruned = 0
        self.rounds = 0
        self._stop_event = threading.Event()

    @classmethod
    def for_app(cls, app: App, **kwargs: Any) -> Pruner:
        """A pruner for the app's ledger with its ``ledger_retention_s``."""
        return cls(Ledger.path_for_app(app), app.settings.ledger_retention_s, **kwargs)

    def run(self) -> None:
        ledger: Ledger | None = None
        # Prune once at start (a worker that restarts often still prunes), then every interval.
        while not self._stop_event.is_set():
            try:
                if ledger is None:
                    ledger = Ledger(self.path, busy_timeout_ms=self.busy_timeout_ms)
                self.pruned += ledger.prune(self.retention_s, self.batch, stop=self._stop_event.is_set)
            except Exception:
                logger.exception("ledger: pruning %s failed; trying again in %.0f s", self.path, self.interval_s)
            self.rounds += 1
            self._stop_event.wait(self.interval_s)
        if ledger is not None:
            ledger.close()

    def stop(self, timeout: float | None = 30.0) -> None:
        """Ask the thread to finish (after the current batch) and join it."""
        self._stop_event.set()
        if self.is_alive():
            self.join(timeout)
