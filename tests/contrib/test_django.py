"""ktasks.contrib.django in-process on SQLite: its migration, the outbox in transaction.atomic(), delay_on_commit.

(The Django project on PostgreSQL under gunicorn is tests/examples/test_outbox_examples.py.)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ktasks.errors import AppDatabaseError
from ktasks.message import decode


class Boom(Exception):
    pass


@pytest.fixture(scope="module")
def django_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    import django
    from django.conf import settings
    from django.core.management import call_command

    if not settings.configured:
        settings.configure(
            INSTALLED_APPS=["ktasks.contrib.django"],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                   "NAME": str(tmp_path_factory.mktemp("django") / "db.sqlite3")}},
            USE_TZ=True,
        )
        django.setup()
    call_command("migrate", verbosity=0)
    from django.db import connection

    yield connection


def _rows(connection: Any) -> list[Any]:
    with connection.cursor() as cur:
        cur.execute("SELECT topic, value FROM ktasks_outbox ORDER BY id")
        return cur.fetchall()


def test_migration_outbox_commits_with_atomic_and_rolls_back_with_it(django_db: Any, closed_port: int) -> None:
    from django.db import transaction

    from ktasks import App
    from ktasks.contrib.django import outbox

    app = App("dj", bootstrap_servers=f"127.0.0.1:{closed_port}")

    @app.task(name="dj.confirm")
    def confirm(order_id: str) -> None: ...

    with pytest.raises(AppDatabaseError, match="transaction.atomic"):
        outbox(app).delay(confirm, "outside")
    with pytest.raises(Boom), transaction.atomic():
        outbox(app).delay(confirm, "rolled-back")
        raise Boom
    assert _rows(django_db) == []
    with transaction.atomic():
        entry = outbox(app).delay(confirm, "kept")
    [(topic, value)] = _rows(django_db)
    message = decode(bytes(value))
    assert topic == "dj.tasks" and message.args == ["kept"] and message.id == entry.id


def test_delay_on_commit_sends_after_commit_and_nothing_on_rollback(django_db: Any, make_app: Any,
                                                                   read_records: Any, topic_end_offsets: Any,
                                                                   tmp_path: Path) -> None:
    from django.db import transaction

    app = make_app()

    @app.task(name="dj.notify")
    def notify(n: int) -> None: ...

    app.ensure_topics([notify.topic])
    with pytest.raises(Boom), transaction.atomic():
        notify.delay_on_commit(1)
        raise Boom
    with transaction.atomic():
        notify.delay_on_commit(2)
        assert not app.producer.started  # nothing sent before the commit
    app.flush()
    [record] = read_records(notify.topic, min_count=1)
    assert decode(record.value).args == [2] and sum(topic_end_offsets(notify.topic).values()) == 1
