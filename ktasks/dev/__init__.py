"""A local Apache Kafka for development and tests (``ktasks dev up|down|status|logs``).

:mod:`ktasks.dev.jars` finds Java and the Kafka jars; :mod:`ktasks.dev.broker`
runs the broker process.
"""

from __future__ import annotations

from .broker import DEFAULT_HOST, DEFAULT_PORT, BrokerStatus, DevBroker, default_state_dir, free_port
from .jars import KAFKA_VERSION, KafkaRuntime, cache_root, find_java, kafka_runtime, resolve_jars

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "KAFKA_VERSION",
    "BrokerStatus",
    "DevBroker",
    "KafkaRuntime",
    "cache_root",
    "default_state_dir",
    "find_java",
    "free_port",
    "kafka_runtime",
    "resolve_jars",
]
