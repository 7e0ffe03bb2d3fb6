"""The quickstart demo that ``make quickstart`` runs, against the test broker."""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from tests.examples import example_env

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_enqueues_and_drains_every_task(kafka_bootstrap: str, unique: Any, tmp_path: Path) -> None:
    env = example_env(kafka_bootstrap, unique, "quickstart", tmp_path / "ledger.sqlite3")
    out = subprocess.run(["bash", str(ROOT / "examples" / "quickstart" / "run.sh")], env=env,
                         capture_output=True, text=True, timeout=240)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "17 tasks enqueued" in log
    assert "17 succeeded" in log and "1 retried" in log and "0 dead-lettered" in log, log[-2000:]
    assert "succeeded in" in log and ": 'report for 2026-11-29: ok (attempt 1)'" in log
