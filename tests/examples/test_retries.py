"""The retries example (examples/retries/run.sh) against the test broker: retries, then the dead-letter topic."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.examples import example_env, run_example


def test_retries_example_retries_then_dead_letters(kafka_bootstrap: str, unique: Any, tmp_path: Path) -> None:
    env = example_env(kafka_bootstrap, unique, "retries", tmp_path / "ledger.sqlite3")
    stdout, log = run_example("retries", env)
    assert "5 tasks enqueued" in log
    # 3 fetch_rate tasks fail twice each (6 retries), parse_invoice is retried twice: 8 retries.
    assert "3 succeeded, 0 skipped (already done), 8 retried, 2 dead-lettered" in log, log[-3000:]
    assert "(attempt 1)); retry 2/4" in log
    assert log.count("succeeded in") == 3
    # ktasks dlq list: the two dead letters, with their reasons.
    listing = stdout[stdout.index("== the dead-letter topic"):]
    rows = [line for line in listing.splitlines() if line.startswith("20")]
    assert len(rows) == 2, listing
    by_task = {row.split()[2]: row for row in rows}
    assert "retries-exhausted" in by_task["tasks.parse_invoice"] and "invoice INV-7 is malformed" in listing
    assert "not-retriable" in by_task["tasks.charge_card"]
    assert f"2 of 2 dead letter(s) in {env['KTASKS_DEFAULT_TOPIC']}.DLT" in listing
