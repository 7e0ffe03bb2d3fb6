"""The topics scheduling keeps its state in, and creating them compacted.

Every piece of scheduling state lives in Kafka, in compacted topics keyed by
what they describe, so a worker that starts (or takes over) rebuilds it by
reading the topic from the beginning: no database, no local file.

* ``<app>.revocations``: one record per revoked task id; compacted and also
  deleted after ``revoke_retention_s`` (``cleanup.policy=compact,delete``).
* ``<app>.scheduled``: ETAs due later than the largest delay tier, keyed by
  task id; a tombstone when it was enqueued.
* ``<app>.beat``: one partition; the last fire of each periodic entry, keyed
  by the entry's name, and the current owner.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..app import App

logger = logging.getLogger(__name__)

__all__ = ["revocations_topic", "scheduled_topic", "beat_topic", "ensure_compacted", "compacted_configs"]


def revocations_topic(app: App) -> str:
    """Where ``app.revoke`` writes: ``<app>.revocations``."""
    return f"{app.name}.revocations"


def scheduled_topic(app: App) -> str:
    """Where ETAs beyond the largest delay tier wait: ``<app>.scheduled``."""
    return f"{app.name}.scheduled"


def beat_topic(app: App) -> str:
    """The periodic tasks' state and owner: ``<app>.beat`` (one partition)."""
    return f"{app.name}.beat"


def compacted_configs(retention_ms: int | None = None) -> dict[str, str]:
    """The configs of a state topic: compacted, and deleting after ``retention_ms`` when given."""
    configs = {"cleanup.policy": "compact"}
    if retention_ms is not None:
        configs = {"cleanup.policy": "compact,delete", "retention.ms": str(retention_ms)}
    # Small segments let compaction and retention act within minutes, not after 1 GB.
    configs["segment.ms"] = str(3600_000)
    return configs


def ensure_compacted(app: App, topic: str, partitions: int, retention_ms: int | None = None) -> None:
    """Create ``topic`` compacted (and deleting after ``retention_ms`` when given) if it is missing.

    A no-op when ``auto_create_topics`` is off: the operator creates it with
    ``ktasks topics create``, which creates the app's state topics too.
    """
    if not app.settings.auto_create_topics or topic in app._ensured:
        return
    app.topics.ensure([topic], partitions=partitions, configs=compacted_configs(retention_ms))
    app._ensured.add(topic)
