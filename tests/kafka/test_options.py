"""``kafka_options`` reach every client that accepts them, and only those (against the real broker)."""

from __future__ import annotations

from typing import Any

from ktasks import App
from ktasks.kafka.consumer import build_consumer
from ktasks.kafka.producer import ProducerHolder

# fetch_max_bytes exists only on the consumer, batch_size only on the producer.
OPTIONS = {"fetch_max_bytes": 2 * 1024 * 1024, "batch_size": 32 * 1024}


def test_each_client_takes_the_options_it_accepts_and_ignores_the_others(kafka_bootstrap: str,
                                                                          unique: Any) -> None:
    app = App(unique("app"), bootstrap_servers=kafka_bootstrap, kafka_options=OPTIONS)
    producer = ProducerHolder(app.settings, "options-test")
    try:
        assert producer.get().config["batch_size"] == OPTIONS["batch_size"]
        assert "fetch_max_bytes" not in producer.get().config
    finally:
        producer.close()
    consumer = build_consumer(app.settings, unique("group"), "options-test")
    try:
        assert consumer.config["fetch_max_bytes"] == OPTIONS["fetch_max_bytes"]
        assert "batch_size" not in consumer.config
    finally:
        consumer.close()
    admin = app.topics.admin()
    assert "batch_size" not in admin.config and "fetch_max_bytes" not in admin.config
    app.close()
