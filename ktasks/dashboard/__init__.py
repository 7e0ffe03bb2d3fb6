"""``ktasks dashboard``: a web page of an app's groups, workers, lag, throughput and dead letters.

It reads only Kafka (the worker reports topic, the admin API, the dead-letter
topics): no database, nothing to deploy next to the workers. See
docs/monitoring.md.
"""

from __future__ import annotations

from .state import DashboardState, Snapshot
from .web import create_app

__all__ = ["create_app", "DashboardState", "Snapshot"]
