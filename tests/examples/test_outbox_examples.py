"""The outbox examples, each with its one command, on the session's broker and a fresh PostgreSQL database.

Flask + SQLAlchemy under gunicorn (3 workers) and Django under gunicorn: 60
orders each, every fifth failing after it wrote its order and its task. The
run checks one confirmation per committed order and none for the rolled-back
ones; the test checks the same in the database, and that the outbox is empty.
"""

from __future__ import annotations

import socket
import subprocess
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.examples import example_env
from tests.helpers import wait_until

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("example", ["flask_outbox", "django_outbox"])
def test_outbox_example_confirms_each_committed_order_once_and_no_rolled_back_one(
        example: str, kafka_bootstrap: str, unique: Any, tmp_path: Path, pg_dsn: str) -> None:
    env = example_env(kafka_bootstrap, unique, example, tmp_path / "ledger.sqlite3")
    env.update(DATABASE_URL=pg_dsn, PORT=str(_free_port()), ORDERS="60", LOG_DIR=str(tmp_path))
    run = subprocess.run(["bash", str(EXAMPLES / example / "run.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    logs = "\n".join(f"--- {p.name}\n{p.read_text()[-3000:]}" for p in sorted(tmp_path.glob("*.log")))
    assert run.returncode == 0, run.stdout + run.stderr + logs
    assert "48 orders committed, 12 requests failed" in run.stdout, run.stdout
    with psycopg.connect(pg_dsn) as conn:
        confirmed = dict(conn.execute("SELECT order_id, count(*) FROM confirmations GROUP BY order_id").fetchall())
        orders = {r[0] for r in conn.execute("SELECT id FROM orders")}
    assert len(orders) == 48 and set(confirmed) == orders and set(confirmed.values()) == {1}

    def outbox_empty() -> bool:
        with psycopg.connect(pg_dsn) as conn:
            return conn.execute("SELECT count(*) FROM ktasks_outbox").fetchone() == (0,)

    wait_until(outbox_empty, 30, message="published rows were left in ktasks_outbox")
