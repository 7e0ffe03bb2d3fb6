"""The idempotency ledger on its own: no broker needed.

Processes are started with the ``spawn`` method, as the worker starts its
children, so each opens its own connection the way a child does.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from ktasks import App
from ktasks.errors import LedgerError
from ktasks.ledger import APPLICATION_ID, SCHEMA_VERSION, TABLE, Kind, Ledger, Pruner, check_ledger
from tests.helpers import corrupt_ledger, read_only, wait_until

SPAWN = multiprocessing.get_context("spawn")


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "ledger.sqlite3"


@pytest.fixture
def ledger(path: Path) -> Any:
    led = Ledger(path)
    yield led
    led.close()


def _raw(path: Path) -> sqlite3.Connection:
    """A second, independent connection: sees only what is committed."""
    return sqlite3.connect(str(path), isolation_level=None)


def _state(path: Path, key: str) -> tuple[str, int, int] | None:
    with _raw(path) as conn:
        row = conn.execute(f"SELECT state, starts, total_starts FROM {TABLE} WHERE key = ?", (key,)).fetchone()
    return None if row is None else (row[0], row[1], row[2])


# -- schema ----------------------------------------------------------------------------
def test_schema_created_versioned_wal_and_indexed(path: Path, ledger: Ledger) -> None:
    conn = _raw(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    # The primary key is indexed: a lookup by key searches, never scans.
    plan = " ".join(r[-1] for r in conn.execute(f"EXPLAIN QUERY PLAN SELECT * FROM {TABLE} WHERE key = 'x'"))
    assert "USING INDEX" in plan and "SCAN" not in plan
    plan = " ".join(r[-1] for r in conn.execute(
        f"EXPLAIN QUERY PLAN SELECT rowid FROM {TABLE} WHERE finished_at < 1 LIMIT 5"))
    assert f"{TABLE}_finished_at" in plan
    conn.close()
    assert ledger.stats()["schema_version"] == SCHEMA_VERSION
    Ledger(path).close()  # reopening an existing ledger is a no-op


def test_newer_schema_and_foreign_files_are_refused(tmp_path: Path) -> None:
    newer = tmp_path / "newer.sqlite3"
    Ledger(newer).close()
    with _raw(newer) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LedgerError, match="schema version"):
        Ledger(newer)
    foreign = tmp_path / "foreign.sqlite3"
    with _raw(foreign) as conn:
        conn.execute("PRAGMA application_id = 42")
    with pytest.raises(LedgerError, match="not a ktasks ledger"):
        Ledger(foreign)


def _old_ledger(path: Path, version: int = 1) -> None:
    """A ledger file as ktasks with schema ``version`` wrote it (1: entries keyed by the key alone)."""
    import sqlite_utils

    from ktasks.ledger_schema import _MIGRATIONS

    path.parent.mkdir(parents=True, exist_ok=True)
    conn = _raw(path)
    conn.execute("PRAGMA journal_mode = WAL")
    for v in range(1, version + 1):
        _MIGRATIONS[v](sqlite_utils.Database(conn))
    cols = "key, task, state, attempt, starts, total_starts, host, pid, started_at, finished_at, result, updated_at"
    rows = [
        ("invoice-42", "billing.charge", "succeeded", 0, 0, 1, "h", 1, 1.0, 2.0, b"\x2a", 2.0),
        ("crashy", "billing.refund", "started", 0, 2, 2, "h", 1, 1.0, None, None, 1.0),
        ("eager-finish", "", "succeeded", 0, 0, 0, None, None, None, 3.0, None, 3.0),
    ]
    conn.executemany(f"INSERT INTO {TABLE} ({cols}) VALUES ({', '.join('?' * 12)})", rows)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


def test_schema_1_ledger_is_migrated_keeping_every_entry(path: Path) -> None:
    _old_ledger(path, 1)
    with Ledger(path) as led:
        assert led.stats()["schema_version"] == SCHEMA_VERSION == 3
        charged = led.get("invoice-42", task="billing.charge")
        assert charged is not None and charged.state == "succeeded" and charged.result_value() == 42
        crashy = led.get("crashy", task="billing.refund")
        assert crashy is not None and crashy.state == "started" and crashy.starts == 2
        assert [e.task for e in led.find("eager-finish")] == [""]
        # The migrated entries keep deciding as before: a success skips, crashes still count.
        assert led.begin("invoice-42", "billing.charge", 0, 3).kind == "skip"
        assert led.begin("crashy", "billing.refund", 0, 3).starts == 3
        # And now the key is the task's own: another task with the same key runs.
        assert led.begin("invoice-42", "billing.receipt", 0, 3).kind == "run"
    with _raw(path) as conn:
        pk = [r[1] for r in sorted(conn.execute(f"PRAGMA table_info({TABLE})"), key=lambda r: r[5]) if r[5]]
        assert pk == ["key", "task"]
        plan = " ".join(r[-1] for r in conn.execute(
            f"EXPLAIN QUERY PLAN SELECT rowid FROM {TABLE} WHERE finished_at < 1 LIMIT 5"))
        assert f"{TABLE}_finished_at" in plan
    Ledger(path).close()  # migrated once: reopening is a no-op


def test_schema_2_ledger_is_migrated_its_starts_judged_by_pid_alone(path: Path) -> None:
    _old_ledger(path, 2)
    with _raw(path) as conn:  # a start recorded by a process that still runs (pid 1)
        conn.execute(f"UPDATE {TABLE} SET pid = 1, host = ? WHERE key = 'crashy'", (socket.gethostname(),))
    with Ledger(path) as led:
        assert led.stats()["schema_version"] == SCHEMA_VERSION
        entry = led.get("crashy", task="billing.refund")
        assert entry is not None and entry.pid_start is None and entry.starts == 2
        # Without a recorded start time, a live pid is taken for the process that started it.
        assert led.begin("crashy", "billing.refund", 0, 3).kind == "running"
        assert led.get("invoice-42", task="billing.charge") is not None


def test_check_ledger_names_the_file_and_what_is_wrong(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a ledger at all " * 100)
    with pytest.raises(LedgerError, match=f"ledger {garbage} is corrupt or not a SQLite file"):
        check_ledger(garbage)
    damaged = tmp_path / "damaged.sqlite3"
    corrupt_ledger(damaged)
    with pytest.raises(LedgerError, match=f"ledger {damaged} is corrupt"):
        check_ledger(damaged)
    readonly = tmp_path / "readonly.sqlite3"
    Ledger(readonly).close()
    with read_only(readonly):
        with pytest.raises(LedgerError, match=f"ledger {readonly} is read-only for this process"):
            check_ledger(readonly)
    check_ledger(readonly)  # writable again: fine
    fresh = tmp_path / "new" / "ledger.sqlite3"
    check_ledger(fresh)  # a missing file is created, as the worker would
    assert Ledger(fresh).stats()["schema_version"] == SCHEMA_VERSION


def test_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert Ledger.default_path("billing") == tmp_path / "xdg" / "ktasks" / "billing.ledger.sqlite3"
    assert Ledger.default_path("a/b c").name == "a_b_c.ledger.sqlite3"
    monkeypatch.delenv("XDG_STATE_HOME")
    assert Ledger.default_path("g") == Path.home() / ".local" / "state" / "ktasks" / "g.ledger.sqlite3"
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    app = App("billing", group_id="billing-workers")
    with Ledger.for_app(app) as led:
        assert led.path == tmp_path / "xdg" / "ktasks" / "billing-workers.ledger.sqlite3"
        assert led.path.exists()
    configured = App("billing", ledger_path=str(tmp_path / "mine.sqlite3"))
    assert Ledger.path_for_app(configured) == tmp_path / "mine.sqlite3"


# -- decisions -------------------------------------------------------------------------
def test_run_then_skip_after_success(path: Path, ledger: Ledger) -> None:
    first = ledger.begin("k", "mod.task", 0, 3)
    assert first.kind == "run" and first.kind is Kind.RUN and first.entry is None and first.starts == 1
    assert _state(path, "k") == ("started", 1, 1)  # the start is committed before begin returns
    ledger.succeeded("k", {"total": 3}, 0.25, task="mod.task")
    again = ledger.begin("k", "mod.task", 0, 3)
    assert again.kind == "skip" and again.entry is not None
    assert again.entry.state == "succeeded" and again.entry.result_value() == {"total": 3}
    entry = ledger.get("k", task="mod.task")
    assert entry is not None and entry.duration_s == 0.25 and entry.starts == 0 and entry.total_starts == 1
    assert entry.host and entry.pid == os.getpid() and entry.started_at and entry.finished_at


def test_a_key_names_one_execution_of_one_task(ledger: Ledger) -> None:
    # charge and send_receipt both keyed "invoice-42": the receipt is not "already succeeded".
    assert ledger.begin("invoice-42", "billing.charge", 0, 3).kind == "run"
    ledger.succeeded("invoice-42", "charged", 0.1, task="billing.charge")
    receipt = ledger.begin("invoice-42", "billing.send_receipt", 0, 3)
    assert receipt.kind == "run" and receipt.entry is None
    ledger.failed("invoice-42", RuntimeError("smtp down"), task="billing.send_receipt")
    assert ledger.begin("invoice-42", "billing.charge", 0, 3).kind == "skip"
    charged = ledger.get("invoice-42", task="billing.charge")
    receipt_entry = ledger.get("invoice-42", task="billing.send_receipt")
    assert charged is not None and charged.state == "succeeded" and charged.result_value() == "charged"
    assert receipt_entry is not None and receipt_entry.state == "failed"
    assert [e.task for e in ledger.find("invoice-42")] == ["billing.charge", "billing.send_receipt"]
    assert ledger.forget("invoice-42", task="billing.send_receipt")
    assert [e.task for e in ledger.find("invoice-42")] == ["billing.charge"]


def test_poison_after_max_starts_without_finishing(ledger: Ledger) -> None:
    # Each begin without a finish is a process that died mid-task.
    assert [ledger.begin("p", "t", 0, 3).kind for _ in range(4)] == ["run", "run", "run", "poison"]
    entry = ledger.get("p", task="t")
    assert entry is not None and entry.state == "poisoned" and entry.starts == 3 and entry.finished_at
    # A redelivery of the same record (the dead-letter copy not yet committed) is poison again.
    poison = ledger.begin("p", "t", 0, 5)
    assert poison.kind == "poison" and poison.starts == 3
    assert poison.entry is not None and poison.entry.state == "poisoned"
    # A replay from the dead-letter topic runs it again, counting crashes afresh.
    replay = ledger.begin("p", "t", 0, 3, replay=True)
    assert replay.kind == "run" and replay.starts == 1
    assert ledger.begin("p", "t", 0, 3, replay=True).kind == "run"  # its own redelivery counts on
    assert ledger.begin("p", "t", 0, 3, replay=True).kind == "run"
    assert ledger.begin("p", "t", 0, 3, replay=True).kind == "poison"
    # 0 means no limit.
    assert all(ledger.begin("u", "t", 0, 0).kind == "run" for _ in range(10))


def test_replay_and_force_after_success(ledger: Ledger) -> None:
    ledger.begin("s", "t", 0, 3)
    ledger.succeeded("s", 1, 0.1, task="t")
    assert ledger.begin("s", "t", 0, 3, replay=True).kind == "skip"  # a plain replay skips a success
    forced = ledger.begin("s", "t", 0, 3, replay=True, force=True)
    assert forced.kind == "run" and forced.starts == 1 and forced.entry is not None
    assert forced.entry.state == "succeeded"


def test_failure_is_a_finish_and_runs_again(ledger: Ledger) -> None:
    assert ledger.begin("f", "t", 0, 2).kind == "run"
    assert ledger.begin("f", "t", 0, 2).kind == "run"  # a crash: 2 unfinished starts
    try:
        raise ValueError("bad input")
    except ValueError as exc:
        ledger.failed("f", exc, task="t")
    entry = ledger.get("f", task="t")
    assert entry is not None and entry.state == "failed" and entry.starts == 0
    assert entry.exc_type == "ValueError" and entry.exc_message == "bad input"
    assert entry.traceback is not None and "raise ValueError" in entry.traceback
    assert entry.duration_s is not None and entry.duration_s >= 0
    # The retry (attempt 1) runs, and the crash counter starts over.
    retry = ledger.begin("f", "t", 1, 2)
    assert retry.kind == "run" and retry.starts == 1
    assert ledger.begin("f", "t", 1, 2).kind == "run"
    assert ledger.begin("f", "t", 1, 2).kind == "poison"
    entry = ledger.get("f", task="t")
    assert entry is not None and entry.attempt == 1 and entry.total_starts == 4
    assert entry.exc_type == "ValueError"  # the last failure is kept as a clue


def test_failure_never_undoes_a_success(ledger: Ledger) -> None:
    ledger.begin("s", "t", 0, 3)
    ledger.succeeded("s", 1, 0.1, task="t")
    ledger.failed("s", RuntimeError("late"), "tb", task="t")
    entry = ledger.get("s", task="t")
    assert entry is not None and entry.state == "succeeded"
    assert ledger.begin("s", "t", 1, 3).kind == "skip"


class _Custom(Exception):
    pass


def test_exception_type_is_qualified(ledger: Ledger) -> None:
    ledger.begin("q", "t", 0, 3)
    ledger.failed("q", _Custom("x"), "given traceback", task="t")
    entry = ledger.get("q", task="t")
    assert entry is not None and entry.exc_type == f"{__name__}._Custom" and entry.traceback == "given traceback"


def test_unencodable_or_huge_result_is_a_note_not_a_failure(path: Path) -> None:
    with Ledger(path, max_result_bytes=100) as led:
        led.begin("a", "t", 0, 3)
        led.succeeded("a", object(), 0.1, task="t")
        led.begin("b", "t", 0, 3)
        led.succeeded("b", "x" * 1000, 0.1, task="t")
        a, b = led.get("a", task="t"), led.get("b", task="t")
    assert a is not None and a.state == "succeeded" and a.result is None and "not encodable" in (a.note or "")
    assert b is not None and b.state == "succeeded" and b.result is None and "max_result_bytes" in (b.note or "")


# -- batching --------------------------------------------------------------------------
def test_finishes_are_buffered_until_flush(path: Path, ledger: Ledger) -> None:
    ledger.begin("a", "t", 0, 3)
    ledger.succeeded("a", 1, 0.1, task="t")
    ledger.begin("b", "t", 0, 3)
    ledger.failed("b", RuntimeError("x"), task="t")
    assert ledger.pending == 2
    assert _state(path, "a") == ("started", 1, 1) and _state(path, "b") == ("started", 1, 1)
    ledger.flush()
    assert ledger.pending == 0
    assert _state(path, "a") == ("succeeded", 0, 1) and _state(path, "b") == ("failed", 0, 1)
    ledger.flush()  # nothing pending: no-op
    ledger.begin("c", "t", 0, 3)
    ledger.succeeded("c", 1, 0.1, task="t")
    entry = ledger.get("c", task="t")  # reads its own buffered writes
    assert entry is not None and entry.state == "succeeded"


def test_begin_carries_buffered_finishes_when_needed(path: Path) -> None:
    with Ledger(path, max_pending=3) as led:
        led.begin("a", "t", 0, 3)
        led.succeeded("a", 1, 0.1, task="t")
        assert led.begin("a", "t", 0, 3).kind == "skip"  # its own buffered success is seen
        assert led.pending == 0 and _state(path, "a") == ("succeeded", 0, 1)
        for key in ("b", "c", "d"):
            led.begin(key, "t", 0, 3)
            led.succeeded(key, 1, 0.1, task="t")
        assert led.pending == 3
        led.begin("e", "t", 0, 3)  # a full buffer rides along with the next start
        assert led.pending == 0 and _state(path, "d") == ("succeeded", 0, 1)


# -- transactions (bound tasks) -------------------------------------------------------
def _side_table(path: Path) -> None:
    with _raw(path) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS side (key TEXT PRIMARY KEY, n INTEGER)")


def _side_rows(path: Path) -> list[tuple[str, int]]:
    with _raw(path) as conn:
        return [tuple(r) for r in conn.execute("SELECT key, n FROM side ORDER BY key")]


def test_transaction_commits_user_write_with_success(path: Path, ledger: Ledger) -> None:
    _side_table(path)
    ledger.begin("t1", "t", 0, 3)
    with ledger.transaction() as conn:
        conn.execute("INSERT INTO side VALUES ('t1', 1)")
        ledger.succeeded("t1", "ok", 0.1, conn=conn, task="t")
        assert _side_rows(path) == [] and _state(path, "t1") == ("started", 1, 1)  # not yet visible
    assert _side_rows(path) == [("t1", 1)] and _state(path, "t1") == ("succeeded", 0, 1)


def test_transaction_rolls_back_on_exception(path: Path, ledger: Ledger) -> None:
    _side_table(path)
    ledger.begin("t2", "t", 0, 3)
    with pytest.raises(ZeroDivisionError):
        with ledger.transaction() as conn:
            conn.execute("INSERT INTO side VALUES ('t2', 1)")
            ledger.succeeded("t2", "ok", 0.1, conn=conn, task="t")
            1 / 0  # noqa: B018
    assert _side_rows(path) == [] and _state(path, "t2") == ("started", 1, 1)
    # The worker records the failure; the retry runs and its write lands exactly once.
    ledger.failed("t2", ZeroDivisionError(), task="t")
    assert ledger.begin("t2", "t", 1, 3).kind == "run"
    with ledger.transaction() as conn:
        conn.execute("INSERT INTO side VALUES ('t2', 2)")
        ledger.succeeded("t2", "ok", 0.1, conn=conn, task="t")
    assert _side_rows(path) == [("t2", 2)]


def test_transaction_refuses_a_tasks_own_commit(path: Path, ledger: Ledger) -> None:
    _side_table(path)
    ledger.begin("t3", "t", 0, 3)
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        with ledger.transaction() as conn:
            conn.execute("INSERT INTO side VALUES ('t3', 1)")
            conn.commit()  # would commit the write without the success record
    with pytest.raises(sqlite3.DatabaseError, match="not authorized"):
        with ledger.transaction() as conn:
            conn.execute("INSERT INTO side VALUES ('t3', 1)")
            conn.execute("COMMIT")
    assert _side_rows(path) == []
    with ledger.transaction() as conn:  # savepoints are the task's to use
        conn.execute("SAVEPOINT mine")
        conn.execute("INSERT INTO side VALUES ('t3', 1)")
        conn.execute("ROLLBACK TO mine")
        conn.execute("RELEASE mine")
        conn.execute("INSERT INTO side VALUES ('t3', 2)")
        ledger.succeeded("t3", None, 0.1, conn=conn, task="t")
    assert _side_rows(path) == [("t3", 2)]
    with pytest.raises(LedgerError, match="nested"):
        with ledger.transaction(), ledger.transaction():
            pass


def test_read_only_task_survives_a_stale_snapshot(path: Path, ledger: Ledger) -> None:
    # A bound task that only reads holds a snapshot; if another process commits
    # meanwhile, SQLite refuses to upgrade it to a write. The success record must
    # still land (the task wrote nothing that needs to be atomic with it).
    _side_table(path)
    other = Ledger(path, busy_timeout_ms=200)
    ledger.begin("r", "t", 0, 3)
    with ledger.transaction() as conn:
        assert conn.execute("SELECT count(*) FROM side").fetchone()[0] == 0  # snapshot taken
        other.begin("someone-else", "t", 0, 3)  # commits: our snapshot is now stale
        ledger.succeeded("r", 7, 0.1, conn=conn, task="t")
    other.close()
    assert _state(path, "r") == ("succeeded", 0, 1)


def _child_transaction_then_exit(path: str, key: str, exit_before_commit: bool) -> None:
    led = Ledger(path)
    assert led.begin(key, "t", 0, 3).kind == "run"
    with led.transaction() as conn:
        conn.execute("INSERT INTO side VALUES (?, 1)", (key,))
        led.succeeded(key, "done", 0.1, conn=conn, task="t")
        if exit_before_commit:
            os._exit(3)  # killed after the task's write, before the commit
    os._exit(4)  # killed right after the commit, before reporting anything


def _run_child(target: Any, *args: Any) -> int:
    proc = SPAWN.Process(target=target, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode is not None, "child hung"
    return proc.exitcode


def test_kill_before_commit_leaves_neither_write_nor_success(path: Path, ledger: Ledger) -> None:
    _side_table(path)
    assert _run_child(_child_transaction_then_exit, str(path), "k1", True) == 3
    assert _side_rows(path) == []
    assert _state(path, "k1") == ("started", 1, 1)  # so the redelivery runs it again
    decision = ledger.begin("k1", "t", 0, 3)
    assert decision.kind == "run" and decision.starts == 2


def test_kill_after_commit_keeps_write_and_success(path: Path, ledger: Ledger) -> None:
    _side_table(path)
    assert _run_child(_child_transaction_then_exit, str(path), "k2", False) == 4
    assert _side_rows(path) == [("k2", 1)]
    assert _state(path, "k2") == ("succeeded", 0, 1)
    assert ledger.begin("k2", "t", 0, 3).kind == "skip"  # the redelivery does not write again


def _child_buffered_then_exit(path: str, key: str, flush: bool) -> None:
    led = Ledger(path)
    led.begin(key, "t", 0, 3)
    led.succeeded(key, 1, 0.1, task="t")
    if flush:
        led.flush()
    os._exit(5)


def test_unflushed_finish_dies_with_its_process(path: Path) -> None:
    # Why the worker flushes before reporting: an unflushed success is lost, so the
    # task counts as unfinished and runs again (at least once, never zero times).
    assert _run_child(_child_buffered_then_exit, str(path), "lost", False) == 5
    assert _state(path, "lost") == ("started", 1, 1)
    assert _run_child(_child_buffered_then_exit, str(path), "kept", True) == 5
    assert _state(path, "kept") == ("succeeded", 0, 1)


def test_ledger_must_not_cross_fork(path: Path, ledger: Ledger) -> None:
    fork = multiprocessing.get_context("fork")
    result = fork.Queue()

    def child() -> None:
        try:
            ledger.begin("x", "t", 0, 3)
            result.put("no error")
        except LedgerError as exc:
            result.put(str(exc))
        ledger.close()  # must not touch the parent's connection

    proc = fork.Process(target=child)
    proc.start()
    proc.join(30)
    assert "after fork" in result.get(timeout=5)
    assert ledger.begin("y", "t", 0, 3).kind == "run"  # the parent's connection is intact


# -- concurrency -----------------------------------------------------------------------
N_PROCS, N_TASKS, N_SHARED = 8, 500, 40


def _worker_process(path: str, index: int, out: Any, go: Any) -> None:
    ran: list[str] = []
    errors: list[str] = []
    try:
        led = Ledger(path)
        go.wait(60)  # all start together, for the most contention
        keys = [f"p{index}-{j}" for j in range(N_TASKS)]
        shared = [f"shared-{j}" for j in range(N_SHARED)]
        # Interleave the shared keys, which every process tries to run.
        plan = keys[:]
        for j, key in enumerate(shared):
            plan.insert((j * 11 + index * 7) % len(plan), key)
        for j, key in enumerate(plan):
            decision = led.begin(key, "bench.task", 0, 3, wait_running_s=20.0)
            if decision.kind != "run":
                assert decision.kind == "skip", (key, decision)
                continue
            ran.append(key)
            if j % 3 == 0:  # a bound task: its write and its success commit together
                with led.transaction() as conn:
                    conn.execute("INSERT INTO side VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1",
                                 (key,))
                    led.succeeded(key, j, 0.0, conn=conn, task="bench.task")
            else:
                led.succeeded(key, j, 0.0, task="bench.task")
            if j % 16 == 15:
                led.flush()  # as the worker does before reporting a batch
        for key in keys[::10]:  # redelivery of finished work
            assert led.begin(key, "bench.task", 0, 3).kind == "skip"
        led.close()
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
    out.put((index, ran, errors))


@pytest.mark.slow
def test_many_processes_at_once_no_lock_errors_each_key_once(path: Path) -> None:
    Ledger(path).close()
    _side_table(path)
    out, go = SPAWN.Queue(), SPAWN.Event()
    procs = [SPAWN.Process(target=_worker_process, args=(str(path), i, out, go)) for i in range(N_PROCS)]
    for p in procs:
        p.start()
    time.sleep(1.0)  # let them import and open the ledger
    go.set()
    results = [out.get(timeout=240) for _ in procs]
    for p in procs:
        p.join(30)
    errors = [e for _, _, errs in results for e in errs]
    assert errors == []
    ran = [key for _, keys, _ in results for key in keys]
    # Every key ran exactly once, including the shared ones all processes raced for.
    assert len(ran) == len(set(ran)) == N_PROCS * N_TASKS + N_SHARED
    with _raw(path) as conn:
        states = dict(conn.execute(f"SELECT state, count(*) FROM {TABLE} GROUP BY state").fetchall())
        assert states == {"succeeded": N_PROCS * N_TASKS + N_SHARED}
        assert conn.execute(f"SELECT max(total_starts) FROM {TABLE}").fetchone()[0] == 1
        assert conn.execute("SELECT max(n) FROM side").fetchone()[0] == 1


def _hold_key(path: str, key: str, hold_s: float) -> None:
    led = Ledger(path)
    led.begin(key, "t", 0, 3)
    time.sleep(hold_s)
    led.succeeded(key, "first", hold_s, task="t")
    led.close()


def test_duplicate_waits_for_the_running_original(path: Path, ledger: Ledger) -> None:
    proc = SPAWN.Process(target=_hold_key, args=(str(path), "dup", 1.0))
    proc.start()
    try:
        wait_until(lambda: _state(path, "dup") if path.exists() else None, 30, message="child never started")
        decision = ledger.begin("dup", "t", 0, 3, wait_running_s=30)
        assert decision.kind == "skip" and decision.entry is not None
        assert decision.entry.result_value() == "first"
    finally:
        proc.join(30)


def test_a_running_original_is_no_crash(path: Path, ledger: Ledger) -> None:
    # max_starts=1: a crash would make the duplicate poison, a live original must not.
    proc = SPAWN.Process(target=_hold_key, args=(str(path), "dup1", 1.0))
    proc.start()
    try:
        wait_until(lambda: _state(path, "dup1") if path.exists() else None, 30, message="child never started")
        assert ledger.begin("dup1", "t", 0, 1, wait_running_s=30).kind == "skip"
    finally:
        proc.join(30)


def _hold_until(path: str, key: str, release: Any) -> None:
    led = Ledger(path)
    led.begin(key, "t", 0, 3)
    release.wait(60)
    led.succeeded(key, "first", 0.0, task="t")
    led.close()


def test_a_live_original_is_never_a_crash_however_long_it_runs(path: Path, ledger: Ledger) -> None:
    release = SPAWN.Event()
    proc = SPAWN.Process(target=_hold_until, args=(str(path), "long", release))
    proc.start()
    try:
        wait_until(lambda: _state(path, "long") if path.exists() else None, 30, message="child never started")
        # Past the wait: still running. Nothing recorded; not poison (max_starts=1), no second start.
        for max_starts in (1, 3):
            decision = ledger.begin("long", "t", 0, max_starts, wait_running_s=0.2)
            assert decision.kind == "running" and decision.kind is Kind.RUNNING
            assert decision.entry is not None and decision.entry.pid == proc.pid
            assert _state(path, "long") == ("started", 1, 1)
        assert ledger.begin("long", "t", 0, 3).kind == "running"  # no wait: answered at once
        release.set()
        decision = ledger.begin("long", "t", 0, 1, wait_running_s=30)
        assert decision.kind == "skip" and decision.entry is not None and decision.entry.result_value() == "first"
    finally:
        release.set()
        proc.join(30)


def test_a_reused_pid_is_not_the_process_that_started(path: Path, ledger: Ledger) -> None:
    # A start recorded by pid 1 (always alive)...
    assert ledger.begin("reused", "t", 0, 3, pid=1).kind == "run"
    entry = ledger.get("reused", task="t")
    if entry is None or entry.pid_start is None:
        pytest.skip("process start times are unknown on this platform")
    assert ledger.begin("reused", "t", 0, 3, pid=os.getpid()).kind == "running"
    # ...but by a process that started at another time: that one is gone, pid 1 was reused.
    with _raw(path) as conn:
        conn.execute(f"UPDATE {TABLE} SET pid_start = pid_start + 1 WHERE key = 'reused'")
    decision = ledger.begin("reused", "t", 0, 3, pid=os.getpid())
    assert decision.kind == "run" and decision.starts == 2  # the dead start counts as a crash


def test_a_dead_original_is_not_waited_for(path: Path, ledger: Ledger) -> None:
    assert _run_child(_child_buffered_then_exit, str(path), "orphan", False) == 5
    started = time.monotonic()
    decision = ledger.begin("orphan", "t", 0, 3, wait_running_s=30)
    assert decision.kind == "run" and time.monotonic() - started < 5


# -- retention -------------------------------------------------------------------------
def _age(path: Path, key: str, seconds: float) -> None:
    with _raw(path) as conn:
        conn.execute(f"UPDATE {TABLE} SET finished_at = finished_at - ?, started_at = started_at - ? "
                     "WHERE key = ?", (seconds, seconds, key))


def test_prune_removes_only_old_finished_entries(path: Path, ledger: Ledger) -> None:
    for key in ("old-ok", "old-failed", "new-ok", "old-started", "old-poison"):
        ledger.begin(key, "t", 0, 1)
    assert ledger.begin("old-poison", "t", 0, 1).kind == "poison"
    ledger.succeeded("old-ok", 1, 0.1, task="t")
    ledger.succeeded("new-ok", 1, 0.1, task="t")
    ledger.failed("old-failed", RuntimeError("x"), task="t")
    ledger.flush()
    for key in ("old-ok", "old-failed", "old-started", "old-poison"):
        _age(path, key, 10 * 86400)
    assert ledger.prune(7 * 86400) == 3
    assert ledger.get("old-ok", task="t") is None and ledger.get("old-failed", task="t") is None \
        and ledger.get("old-poison", task="t") is None
    assert ledger.get("new-ok", task="t") is not None
    assert ledger.get("old-started", task="t") is not None  # unfinished: the evidence for poison
    assert ledger.forget("old-started", task="t") and not ledger.forget("old-started", task="t")


def test_prune_in_batches(path: Path, ledger: Ledger) -> None:
    for i in range(25):
        ledger.begin(f"k{i}", "t", 0, 3)
        ledger.succeeded(f"k{i}", i, 0.0, task="t")
    ledger.flush()
    assert ledger.prune(-1, batch=10) == 25
    assert ledger.stats()["total"] == 0


def test_pruner_thread(path: Path, ledger: Ledger) -> None:
    for i in range(30):
        ledger.begin(f"k{i}", "t", 0, 3)
        ledger.succeeded(f"k{i}", i, 0.0, task="t")
    ledger.begin("fresh", "t", 0, 3)
    ledger.succeeded("fresh", 0, 0.0, task="t")
    ledger.flush()
    for i in range(30):
        _age(path, f"k{i}", 3600)
    pruner = Pruner(path, retention_s=60, interval_s=0.05, batch=7)
    pruner.start()
    try:
        wait_until(lambda: pruner.pruned >= 30 and pruner.rounds >= 2, 10, message="pruner did not prune")
    finally:
        pruner.stop()
    assert not pruner.is_alive()
    assert ledger.stats()["total"] == 1


def test_pruner_for_app(tmp_path: Path) -> None:
    app = App("prune-app", ledger_path=str(tmp_path / "l.sqlite3"), ledger_retention_s=120)
    pruner = Pruner.for_app(app, interval_s=3600)
    assert pruner.retention_s == 120 and Path(pruner.path) == tmp_path / "l.sqlite3" and pruner.daemon
    pruner.start()
    wait_until(lambda: pruner.rounds >= 1, 10)
    started = time.monotonic()
    pruner.stop()
    assert time.monotonic() - started < 5  # stop does not wait out the interval


def test_prune_does_not_stall_writers(path: Path, ledger: Ledger) -> None:
    with _raw(path) as conn:
        conn.execute("BEGIN")
        conn.executemany(
            f"INSERT INTO {TABLE} (key, task, state, finished_at, updated_at) VALUES (?, 't', 'succeeded', 1, 1)",
            ((f"old{i}",) for i in range(60000)))
        conn.execute("COMMIT")
    latencies: list[float] = []
    stop = threading.Event()

    def writer() -> None:
        with Ledger(path) as led:
            i = 0
            while not stop.is_set():
                t0 = time.perf_counter()
                led.begin(f"w{i}", "t", 0, 3)
                led.succeeded(f"w{i}", i, 0.0, task="t")
                led.flush()
                latencies.append(time.perf_counter() - t0)
                i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        assert ledger.prune(86400, batch=2000) == 60000
    finally:
        stop.set()
        thread.join(30)
    assert latencies and max(latencies) < 2.0  # writers waited for one batch at most, never the whole prune


def test_stats(path: Path, ledger: Ledger) -> None:
    ledger.begin("a", "t", 0, 3)
    ledger.begin("a", "t", 0, 3)
    ledger.begin("b", "t", 0, 3)
    ledger.succeeded("b", 1, 0.1, task="t")
    ledger.begin("c", "t", 0, 3)
    ledger.failed("c", RuntimeError(), task="t")
    figures = ledger.stats()
    assert figures["total"] == 3
    assert figures["by_state"] == {"started": 1, "prepared": 0, "succeeded": 1, "failed": 1, "poisoned": 0, "revoked": 0,
                                   "expired": 0}
    assert figures["size_bytes"] > 0 and figures["schema_version"] == SCHEMA_VERSION
    assert figures["oldest_entry_at"] is not None and figures["oldest_entry_at"] <= time.time()
    assert figures["most_unfinished_starts"] == 2


def test_closed_ledger(path: Path) -> None:
    led = Ledger(path)
    led.begin("a", "t", 0, 3)
    led.succeeded("a", 1, 0.1, task="t")
    led.close()  # flushes
    led.close()
    assert _state(path, "a") == ("succeeded", 0, 1)
    with pytest.raises(LedgerError, match="closed"):
        led.begin("b", "t", 0, 3)


def test_not_run_records_revoked_and_expired_but_never_over_a_success(ledger: Ledger) -> None:
    ledger.not_run("k1", task="t", state="revoked", note="revoked at X")
    entry = ledger.get("k1", task="t")
    assert entry is not None and entry.state == "revoked" and entry.note == "revoked at X" and entry.finished
    assert ledger.begin("k2", "t", 0, 3).run
    ledger.not_run("k2", task="t", state="expired")
    assert ledger.get("k2", task="t").state == "expired"    # type: ignore[union-attr]
    ledger.succeeded("k3", 1, 0.1, task="t")
    ledger.flush()
    ledger.not_run("k3", task="t", state="revoked")
    assert ledger.get("k3", task="t").state == "succeeded"  # type: ignore[union-attr]
    with pytest.raises(LedgerError, match="not_run state"):
        ledger.not_run("k4", task="t", state="failed")


def test_a_prepared_success_waits_for_its_transaction(path: Path, ledger: Ledger) -> None:
    # --transactional: a success is "prepared" until the worker's Kafka transaction commits.
    assert ledger.begin("tx", "t", 0, 3, pid=1).kind == "run"          # started by a live process (pid 1)
    ledger.succeeded("tx", "value", 0.1, task="t", prepared=True)
    ledger.flush()
    assert _state(path, "tx")[0] == "prepared"
    assert ledger.begin("tx", "t", 0, 3, pid=os.getpid()).kind == "running", "its process may still commit it"
    ledger.confirm([("tx", "t")])
    assert ledger.begin("tx", "t", 0, 3, pid=os.getpid()).kind == "skip", "committed: it succeeded"

    assert ledger.begin("aborted", "t", 0, 3, pid=1).kind == "run"
    ledger.succeeded("aborted", "value", 0.1, task="t", prepared=True)
    ledger.flush()
    ledger.release([("aborted", "t")], "transaction aborted: test")
    entry = ledger.get("aborted", task="t")
    assert entry is not None and entry.state == "failed" and entry.note == "transaction aborted: test"
    assert ledger.begin("aborted", "t", 0, 3, pid=os.getpid()).kind == "run", "aborted: it runs again"
    ledger.confirm([("aborted", "t")])      # a confirm for a key no longer prepared changes nothing
    assert _state(path, "aborted")[0] == "started"


def test_a_prepared_success_left_by_a_dead_process_runs_again(path: Path, ledger: Ledger) -> None:
    assert _run_child(_child_prepared_then_exit, str(path), "orphan-tx", False) == 5
    decision = ledger.begin("orphan-tx", "t", 0, 3, pid=os.getpid())
    assert decision.kind == "run", "its worker died before the transaction committed: its records were aborted"


def _child_prepared_then_exit(path: str, key: str, _flag: bool) -> None:
    ledger = Ledger(path)
    ledger.begin(key, "t", 0, 3)
    ledger.succeeded(key, "value", 0.1, task="t", prepared=True)
    ledger.flush()
    os._exit(5)
