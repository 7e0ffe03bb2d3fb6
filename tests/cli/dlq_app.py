"""A small app for the ``ktasks dlq`` CLI tests, loaded with ``-A dlq_app:app``.

Its name and task topic come from ``DLQ_TEST_APP`` and ``DLQ_TEST_TOPIC`` (and
the broker from ``KTASKS_BOOTSTRAP_SERVERS``), so each test gets its own.
"""

from __future__ import annotations

import os

from ktasks import App

app = App(os.environ["DLQ_TEST_APP"], default_topic=os.environ["DLQ_TEST_TOPIC"])


@app.task(name="dlq_test.add")
def add(x: int, y: int) -> int:
    return x + y
