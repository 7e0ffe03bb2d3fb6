"""The quickstart demo that ``make quickstart`` runs, against the test broker."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def test_quickstart_enqueues_and_drains_every_task(kafka_bootstrap: str, unique: Any, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update(
        KTASKS_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KTASKS_DEFAULT_TOPIC=unique("quickstart"),
        KTASKS_GROUP_ID=unique("quickstart"),
        KTASKS_LEDGER_PATH=str(tmp_path / "ledger.sqlite3"),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    out = subprocess.run(["bash", str(ROOT / "examples" / "quickstart" / "run.sh")], env=env,
                         capture_output=True, text=True, timeout=240)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-4000:]
    assert "17 tasks enqueued" in log
    assert "17 succeeded" in log and "1 retried" in log and "0 dead-lettered" in log, log[-2000:]
    assert "succeeded in" in log and ": 'report for 2026-11-29: ok (attempt 1)'" in log
