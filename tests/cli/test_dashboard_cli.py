"""``ktasks dashboard`` options (no broker: the checks happen before the app is loaded)."""

from __future__ import annotations

from click.testing import CliRunner

from ktasks.cli import cli


def test_read_only_and_allow_actions_together_is_a_usage_error():
    result = CliRunner().invoke(cli, ["dashboard", "-A", "nowhere:app", "--read-only", "--allow-actions"])
    assert result.exit_code == 2
    assert "--read-only and --allow-actions contradict each other" in result.output


def test_binds_loopback_and_is_read_only_by_default():
    result = CliRunner().invoke(cli, ["dashboard", "--help"])
    assert result.exit_code == 0
    assert "binds 127.0.0.1 unless --host" in " ".join(result.output.split())
    assert "Read-only unless --allow-actions" in " ".join(result.output.split())
