"""``ktasks ledger show|stats|prune``: output and how the ledger file is found. No broker needed."""

from __future__ import annotations

import json
import sqlite3
import uuid
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ktasks.cli.ledger import COMMANDS, ledger, parse_duration
from ktasks.ledger import SCHEMA_VERSION, TABLE, Ledger


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for var in ("KTASKS_LEDGER", "KTASKS_LEDGER_PATH", "KTASKS_LEDGER_RETENTION_S"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))


@pytest.fixture
def path(tmp_path: Path) -> Path:
    """A ledger with one succeeded, one failed, one started and one old succeeded entry."""
    p = tmp_path / "ledger.sqlite3"
    with Ledger(p) as led:
        led.begin("ok-key", "billing.charge", 0, 3)
        led.succeeded("ok-key", {"charged": 42}, 0.125, task="billing.charge")
        led.begin("bad-key", "billing.charge", 1, 3)
        try:
            raise ValueError("card declined")
        except ValueError as exc:
            led.failed("bad-key", exc, task="billing.charge")
        led.begin("running-key", "billing.refund", 0, 3)
        led.begin("running-key", "billing.refund", 0, 3)
        led.begin("old-key", "billing.charge", 0, 3)
        led.succeeded("old-key", None, 0.5, task="billing.charge")
    with sqlite3.connect(str(p)) as conn:
        conn.execute(f"UPDATE {TABLE} SET finished_at = finished_at - 864000 WHERE key = 'old-key'")
    return p


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(ledger, list(args), env=env, catch_exceptions=False)


def test_module_exposes_the_group() -> None:
    assert COMMANDS == [ledger]
    assert set(ledger.commands) >= {"show", "stats", "prune"}


def test_registered_with_the_main_cli() -> None:
    from ktasks.cli import cli

    assert cli.commands.get("ledger") is ledger


def test_show_succeeded(path: Path) -> None:
    result = run("--ledger", str(path), "show", "ok-key")
    assert result.exit_code == 0, result.output
    out = result.output
    assert "key:         ok-key" in out
    assert "billing.charge" in out and "succeeded" in out
    assert "{'charged': 42}" in out and "0.125 s" in out
    assert "0 unfinished, 1 in all" in out


def test_show_failed_with_traceback(path: Path) -> None:
    result = run("show", "bad-key", "--ledger", str(path))  # the option after the command works too
    assert result.exit_code == 0, result.output
    assert "state:       failed" in result.output
    assert "error:       ValueError: card declined" in result.output
    assert "Traceback (most recent call last)" in result.output and 'raise ValueError("card declined")' in result.output


def test_show_json(path: Path) -> None:
    result = run("--ledger", str(path), "show", "running-key", "--json")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.output)
    assert entry["state"] == "started" and entry["starts"] == 2 and entry["task"] == "billing.refund"
    result = run("--ledger", str(path), "show", "ok-key", "--json")
    assert json.loads(result.output)["result"] == {"charged": 42}


def test_show_missing_key(path: Path) -> None:
    result = run("--ledger", str(path), "show", "nope")
    assert result.exit_code == 1 and "no entry for 'nope'" in result.output


def test_show_key_shared_by_two_tasks_needs_the_task(path: Path) -> None:
    with Ledger(path) as led:
        led.begin("ok-key", "billing.receipt", 0, 3)
    result = run("--ledger", str(path), "show", "ok-key")
    assert result.exit_code == 1
    assert "'ok-key' has entries of 2 tasks (billing.charge, billing.receipt): pass --task NAME" in result.output
    result = run("--ledger", str(path), "show", "ok-key", "--task", "billing.receipt", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["task"] == "billing.receipt" and data["state"] == "started"
    result = run("--ledger", str(path), "show", "ok-key", "--task", "billing.nope")
    assert result.exit_code == 1 and "no entry for 'ok-key' of task 'billing.nope'" in result.output


def test_stats(path: Path) -> None:
    result = run("--ledger", str(path), "stats")
    assert result.exit_code == 0, result.output
    out = result.output
    assert f"{path} (schema {SCHEMA_VERSION})" in out
    assert "entries:         4" in out
    assert "  started:       1" in out and "  succeeded:     2" in out and "  failed:        1" in out
    assert "KiB" in out and "oldest entry:" in out and "(10.0d ago)" in out
    assert "most starts of an unfinished key: 2" in out
    figures = json.loads(run("--ledger", str(path), "stats", "--json").output)
    assert figures["total"] == 4 and figures["by_state"]["succeeded"] == 2


def test_prune(path: Path) -> None:
    result = run("--ledger", str(path), "prune", "--older-than", "7d")
    assert result.exit_code == 0, result.output
    assert "pruned 1 entries finished more than 7.0d ago" in result.output
    with Ledger(path) as led:
        assert led.get("old-key", task="billing.charge") is None and led.get("ok-key", task="billing.charge") is not None
    result = run("--ledger", str(path), "prune", "--older-than", "0s")
    assert "pruned 2 entries" in result.output  # the finished ones; the started one stays
    assert json.loads(run("--ledger", str(path), "stats", "--json").output)["by_state"]["started"] == 1


def test_prune_default_retention_from_environment(path: Path) -> None:
    result = run("--ledger", str(path), "prune", env={"KTASKS_LEDGER_RETENTION_S": "86400"})
    assert result.exit_code == 0, result.output
    assert "pruned 1 entries finished more than 1.0d ago" in result.output


def test_prune_rejects_bad_durations(path: Path) -> None:
    result = run("--ledger", str(path), "prune", "--older-than", "7 weeks")
    assert result.exit_code == 2 and "is not a duration" in result.output


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("15m", 900.0), ("2h", 7200.0), ("7d", 604800.0), ("1.5h", 5400.0),
    (" 3D ", 259200.0), (".5m", 30.0),
])
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "d", "7w", "-1d", "1d2h", "7 d x"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


# -- finding the ledger ----------------------------------------------------------------
@pytest.mark.parametrize("var", ["KTASKS_LEDGER", "KTASKS_LEDGER_PATH"])
def test_path_from_environment(path: Path, var: str) -> None:
    result = run("stats", env={var: str(path)})
    assert result.exit_code == 0, result.output
    assert str(path) in result.output


def test_flag_beats_environment(path: Path, tmp_path: Path) -> None:
    result = run("--ledger", str(path), "stats", env={"KTASKS_LEDGER": str(tmp_path / "other.sqlite3")})
    assert result.exit_code == 0 and str(path) in result.output


def _app_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, settings: str) -> str:
    name = f"ledger_cli_app_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text(
        f"from ktasks import App\napp = App('ledgercli', group_id='ledger-cli-group'{settings})\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    return name


def test_path_from_app_setting(path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _app_module(tmp_path, monkeypatch, f", ledger_path={str(path)!r}, ledger_retention_s=3600")
    result = run("-A", f"{module}:app", "stats")
    assert result.exit_code == 0, result.output
    assert str(path) in result.output
    result = run("prune", "-A", module)  # retention from the app's settings
    assert "pruned 1 entries finished more than 1.0h ago" in result.output


def test_path_from_app_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    module = _app_module(tmp_path, monkeypatch, "")
    default = tmp_path / "xdg" / "ktasks" / "ledger-cli-group.ledger.sqlite3"
    with Ledger(default) as led:
        led.begin("k", "t", 0, 3)
    result = run("-A", f"{module}:app", "show", "k")
    assert result.exit_code == 0, result.output
    assert "state:       started" in result.output


def test_only_ledger_in_default_directory(tmp_path: Path) -> None:
    Ledger(Ledger.default_path("only")).close()
    result = run("stats")
    assert result.exit_code == 0, result.output
    assert "only.ledger.sqlite3" in result.output
    Ledger(Ledger.default_path("second")).close()
    result = run("stats")
    assert result.exit_code == 2 and "2 ledgers in" in result.output


def test_no_ledger_found(tmp_path: Path) -> None:
    result = run("stats")
    assert result.exit_code == 2 and "which ledger?" in result.output
    missing = tmp_path / "typo.sqlite3"
    result = run("--ledger", str(missing), "stats")
    assert result.exit_code == 1 and f"no ledger at {missing}" in result.output
    assert not missing.exists()  # a typo does not create an empty ledger


def test_bad_app_is_a_usage_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("-A", "no_such_module_for_ledger_cli", "stats")
    assert result.exit_code == 2 and "no module named" in result.output
