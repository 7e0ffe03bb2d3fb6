"""The worker: a parent that owns the Kafka consumer and a prefork pool of children."""

from .worker import EXIT_COLD, EXIT_ERROR, EXIT_OK, Worker

__all__ = ["Worker", "EXIT_OK", "EXIT_ERROR", "EXIT_COLD"]
