"""Records compressed by other producers (Java and Go clients default to snappy or lz4).

kafka-python decompresses a batch only with the codec's module installed; without it the
fetch raises ``UnsupportedCodecError`` and the worker stops. ktasks depends on
``kafka-python[snappy,lz4,zstd]`` so every codec a Kafka producer may use is readable.
"""

from __future__ import annotations

from typing import Any

import pytest
from kafka import KafkaProducer

from ktasks.headers import H_ID, H_TASK
from ktasks.message import Message, encode
from tests.fixtures.worker import wait_effects


@pytest.mark.parametrize("codec", ["snappy", "lz4", "zstd", "gzip"])
def test_worker_runs_tasks_from_compressed_batches(project: Any, codec: str) -> None:
    p = project("""
        @app.task
        def add(a, b):
            effect("add", total=a + b)
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    raw = KafkaProducer(bootstrap_servers=p.bootstrap, compression_type=codec, linger_ms=50)
    try:
        name = p.app_module.add.name
        for n in range(5):
            message = Message(task=name, args=[n, 1], kwargs={})
            raw.send(p.topic, encode(message),
                     headers=[(H_TASK, name.encode()), (H_ID, message.id.encode())])
        raw.flush(timeout=30)
    finally:
        raw.close()
    done = wait_effects(p, "add", 5)
    assert sorted(e["total"] for e in done) == [1, 2, 3, 4, 5]
    assert w.proc.poll() is None, "the worker stopped on a compressed batch"
