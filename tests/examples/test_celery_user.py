"""The Celery user's project (examples/celery_user/run.sh) against the test broker: KTASKS_APP, -Q,
countdown= and expires=, and the project's own eager-mode unit tests (a retry, an idempotent task)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from tests.examples import example_env, run_example


def test_celery_user_project(kafka_bootstrap: str, unique: Any, tmp_path: Path) -> None:
    env = example_env(kafka_bootstrap, unique, "shop", tmp_path / "ledger.sqlite3")
    env.update(SHOP_EMAIL_QUEUE=unique("emails"), SHOP_OUTBOX=str(tmp_path / "outbox.jsonl"))
    env.pop("KTASKS_APP", None)
    stdout, log = run_example("celery_user", env, timeout_s=600)
    assert "7 tasks enqueued" in log
    # 2 rates (each failing twice first: 4 retries) and 3 receipts ran; the duplicate receipt was
    # skipped by the ledger; the expired one was not run (ledger state expired).
    # The summary counts every record that finished unrun as skipped.
    assert "5 succeeded, 2 skipped (already done), 4 retried, 0 dead-lettered" in log, log[-4000:]
    rows = [json.loads(line) for line in (tmp_path / "outbox.jsonl").read_text().splitlines()]
    assert Counter(r["order_id"] for r in rows if r["kind"] == "email") == Counter([1, 2, 3])
    assert sorted((r["currency"], r["attempt"]) for r in rows if r["kind"] == "rate") == [("GBP", 2), ("USD", 2)]
    listing = stdout[stdout.index("== the ledger"):stdout.index("== eager-mode unit tests")]
    assert "expired:" in listing and "1" in listing.split("expired:")[1].split()[0], listing
    assert "5 passed" in stdout[stdout.index("== eager-mode unit tests"):], log[-4000:]
