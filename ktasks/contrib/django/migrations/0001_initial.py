"""Create ``ktasks_outbox`` (and its NOTIFY trigger on PostgreSQL) and ``ktasks_claims``."""

from __future__ import annotations

from typing import Any

from django.db import migrations

from ktasks.appdb.dialect import CLAIMS_TABLE, OUTBOX_TABLE, Dialect, schema_statements


def _create(apps: Any, schema_editor: Any) -> None:
    vendor = schema_editor.connection.vendor
    for statement in schema_statements(Dialect(vendor if vendor in ("postgresql", "sqlite") else "generic")):
        schema_editor.execute(statement, params=None)


def _drop(apps: Any, schema_editor: Any) -> None:
    for table in (OUTBOX_TABLE, CLAIMS_TABLE):
        schema_editor.execute(f"DROP TABLE IF EXISTS {table}", params=None)


class Migration(migrations.Migration):
    initial = True
    dependencies: list[Any] = []
    operations = [migrations.RunPython(_create, _drop)]
