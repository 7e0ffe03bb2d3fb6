"""Print the payments table: one row per order, however many messages asked for it."""

from __future__ import annotations

import sqlite3
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from tasks import app  # noqa: E402

from ktasks.ledger import Ledger  # noqa: E402


def main() -> None:
    path = Ledger.path_for_app(app)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    rows = db.execute("SELECT order_id, cents, task_id FROM payments ORDER BY order_id").fetchall()
    for order_id, cents, task_id in rows:
        print(f"{order_id}: charged {cents} cents by task {task_id}")
    total = sum(cents for _, cents, _ in rows)
    print(f"{len(rows)} payments, {total} cents in all (ledger {path})")
    db.close()


if __name__ == "__main__":
    main()
