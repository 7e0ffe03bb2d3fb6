"""The payments example (examples/payments/run.sh): every order enqueued twice is charged once, run after run."""

from __future__ import annotations

import sqlite3
import subprocess
from pathlib import Path
from typing import Any

from tests.examples import example_env

ROOT = Path(__file__).resolve().parents[2]
ORDERS = {"order-1": 1999, "order-2": 4500, "order-3": 120, "order-4": 99900, "order-5": 2500}


def test_payments_example_charges_each_order_once(kafka_bootstrap: str, unique: Any, tmp_path: Path) -> None:
    ledger = tmp_path / "ledger.sqlite3"
    env = example_env(kafka_bootstrap, unique, "payments", ledger)
    assert "    bash examples/payments/run.sh\n" in (ROOT / "examples" / "payments" / "README.md").read_text()

    def run() -> str:
        out = subprocess.run(["bash", str(ROOT / "examples" / "payments" / "run.sh")], env=env, cwd=ROOT,
                             capture_output=True, text=True, timeout=240)
        log = out.stdout + out.stderr
        assert out.returncode == 0, log[-4000:]
        assert "10 payment messages enqueued for 5 orders" in log
        return log

    first = run()
    assert "5 succeeded, 5 skipped (already done), 0 retried, 0 dead-lettered" in first, first[-3000:]
    assert first.count("already succeeded (ledger key charge-order-") == 5
    for order_id, cents in ORDERS.items():
        assert first.count(f"{order_id}: charged {cents} cents by task ") == 1
    assert f"5 payments, {sum(ORDERS.values())} cents in all" in first

    # The same ten messages again: every order was charged already, so nothing runs.
    second = run()
    assert "0 succeeded, 10 skipped (already done)" in second, second[-3000:]
    assert f"5 payments, {sum(ORDERS.values())} cents in all" in second

    db = sqlite3.connect(ledger)
    try:
        rows = dict(db.execute("SELECT order_id, cents FROM payments").fetchall())
        successes = db.execute("SELECT COUNT(*) FROM ktasks_ledger WHERE state = 'succeeded'").fetchone()[0]
    finally:
        db.close()
    assert rows == ORDERS
    assert successes == 5
