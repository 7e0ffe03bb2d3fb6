"""ktasks.contrib.sqlalchemy: the outbox row joins the Session's transaction (SQLite and PostgreSQL).

(Flask + SQLAlchemy on PostgreSQL under gunicorn is tests/examples/test_outbox_examples.py.)
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.orm import Session

from ktasks import App
from ktasks.contrib.sqlalchemy import create_schema, outbox
from ktasks.errors import EncodeError
from ktasks.message import decode
from tests.fixtures.appdb import AppDb


def test_session_outbox_commits_and_rolls_back_with_the_session(appdb: AppDb, closed_port: int) -> None:
    url = appdb.dsn.replace("postgresql://", "postgresql+psycopg://", 1)
    engine = create_engine(url)
    create_schema(engine)  # already there: must be a no-op
    app = App("sa", bootstrap_servers=f"127.0.0.1:{closed_port}")

    @app.task(name="sa.confirm")
    def confirm(order_id: str) -> None: ...

    with Session(engine) as session:
        session.execute(text("INSERT INTO orders VALUES (:id, :total)"), {"id": "o-1", "total": 1})
        outbox(app, session).delay(confirm, "o-1")
        session.rollback()
        with pytest.raises(EncodeError, match="positional argument 0"):
            outbox(app, session).delay(confirm, object())
        session.execute(text("INSERT INTO orders VALUES (:id, :total)"), {"id": "o-2", "total": 2})
        entry: Any = outbox(app, session).apply_async(confirm, args=["o-2"], key="c-1")
        session.commit()
        rows = session.execute(text("SELECT id, key, value FROM ktasks_outbox")).all()
    engine.dispose()
    assert [(r[0], bytes(r[1]), decode(bytes(r[2])).args) for r in rows] == [(entry.row_id, b"c-1", ["o-2"])]
    assert appdb.count("orders") == 1
