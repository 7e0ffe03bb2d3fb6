"""The one place ktasks meets kafka-python.

Every other module of ktasks imports what it needs of Kafka from here
(``tests/kafka/test_seam.py`` fails on any other ``import kafka``), so the
client library's names, its configuration and the workarounds for its bugs
each have one home:

==========================  ========================================================
module                      what
==========================  ========================================================
:mod:`.clients`             the client classes and value types ktasks uses, and the
                            options each client gets (``kafka_options`` filtered per
                            client)
:mod:`.errors`              kafka-python's errors ktasks catches, and how to read them
:mod:`.consumer`            the worker's consumer and its rebalance listener
:mod:`.assignor`            the ``balanced`` assignor
:mod:`.producer`            one producer per process, fork-safe, flushed at exit
:mod:`.auth`                SASL failures reported at once (workaround)
:mod:`.joinfix`             group joins lost between two polls (workaround)
:mod:`.producer_recovery`   the producer stuck without a producer id (workaround)
==========================  ========================================================

The workarounds for kafka-python 3.0.12's bugs, each explained where it lives:
a rejected SASL login looks like an unreachable cluster (:mod:`.auth`); a
JoinGroup round trip finished between two ``poll(timeout_ms=0)`` calls is
thrown away, a rebalance storm (:mod:`.joinfix`); a paused partition's parked
records are never restored (``max_poll_records`` in :mod:`.consumer`); a batch
expiring at ``delivery_timeout_ms`` leaves the idempotent producer without a
producer id for good, and a "too large" answer makes it fatal
(:mod:`.producer_recovery`); its ``atexit`` flush is too short
(:mod:`.producer`).
"""

from __future__ import annotations

import warnings

# kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy API when it is
# imported: about 200 DeprecationWarnings that are not the user's to fix. Silence exactly those,
# only for this import (every kafka module ktasks uses is loaded below), not globally.
with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=r"(read_text|open_text) is deprecated", category=DeprecationWarning)
    from . import auth as auth
    from .clients import (
        ConfigResource,
        ConfigResourceType,
        ConsumerRebalanceListener,
        FutureRecordMetadata,
        KafkaAdminClient,
        KafkaConsumer,
        KafkaProducer,
        OffsetAndMetadata,
        OffsetSpec,
        TopicPartition,
        client_config,
        murmur2,
        reader,
    )

__all__ = [
    "ConfigResource", "ConfigResourceType", "FutureRecordMetadata", "KafkaAdminClient", "KafkaConsumer",
    "KafkaProducer", "OffsetAndMetadata", "OffsetSpec", "TopicPartition", "client_config", "murmur2", "reader", "ConsumerRebalanceListener",
]
