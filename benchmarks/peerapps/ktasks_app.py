"""The ktasks side: one task, configured by the harness through ``KTASKS_*`` variables.

``KTASKS_BOOTSTRAP_SERVERS``, ``KTASKS_DEFAULT_TOPIC``, ``KTASKS_GROUP_ID``,
``KTASKS_LEDGER_PATH`` and ``KTASKS_PARTITIONS`` come from the environment
(ktasks reads its settings from there); the ledger stays on (the default).
"""

from __future__ import annotations

from ktasks import App

from . import record

app = App("benchpeers")


@app.task(name="bench.work")
def work(enqueued_at: float, sleep_s: float) -> None:
    """The shared benchmark task."""
    record.work(enqueued_at, sleep_s)
