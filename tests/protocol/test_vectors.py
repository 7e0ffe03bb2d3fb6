"""The Python encoder and decoder against the wire-format test vectors (protocol/vectors/).

A change to the envelope that breaks a vector fails here: either the change is
a mistake, or it is a new format version (docs/protocol.md, "Versions").
"""

from __future__ import annotations

import re

import pytest
from kafka import KafkaProducer

from ktasks.errors import DecodeError
from ktasks.kafka.producer import ProducerHolder
from ktasks.message import decode, encode, headers_of
from ktasks.settings import Settings
from tests.protocol import vectors
from tests.protocol.typed import to_json

VALID = vectors.valid()
INVALID = vectors.invalid()


def test_there_are_vectors_of_each_kind() -> None:
    assert len(VALID) >= 10 and len(INVALID) >= 20
    assert {v.reason for v in INVALID} == set(vectors.reasons()), "every reason has a vector and is defined"


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_encoder_writes_the_vector_byte_for_byte(vector: vectors.Valid) -> None:
    assert encode(vector.message()).hex() == vector.value.hex()


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_headers_are_the_reserved_three_then_the_callers(vector: vectors.Valid) -> None:
    message = vector.message()
    assert headers_of(message, dict(vector.caller_headers)) == vector.headers


@pytest.mark.parametrize("vector", VALID, ids=lambda v: v.name)
def test_decoder_reads_the_vector_as_its_meaning(vector: vectors.Valid) -> None:
    message = decode(vector.value)
    assert to_json(message.to_dict()) == vector.envelope
    # to_dict() is what the encoder writes: the vector names every field it writes, in its order.
    assert list(message.to_dict()) == list(vector.envelope)


@pytest.mark.parametrize("vector", INVALID, ids=lambda v: v.name)
def test_decoder_rejects_the_invalid_vector_naming_why(vector: vectors.Invalid) -> None:
    with pytest.raises(DecodeError) as caught:
        decode(vector.value)
    assert re.search(vector.pattern(), str(caught.value)), (vector.reason, str(caught.value))


class _Topic:
    """The cluster view a kafka-python partitioner asks for: one topic of ``n`` partitions."""

    def __init__(self, n: int) -> None:
        self.n = n

    def topics(self) -> set[str]:
        return {"t"}

    def partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))

    def available_partitions_for_topic(self, topic: str) -> set[int]:
        return set(range(self.n))


def test_keyed_records_go_to_the_murmur2_partition() -> None:
    # ktasks' producer keeps kafka-python's default partitioner (unless kafka_options replaces it).
    assert "partitioner" not in ProducerHolder(Settings({}), "ktasks-test").config()
    partitioner = KafkaProducer.DEFAULT_CONFIG["partitioner"]
    cases = vectors.partition_cases()
    assert cases
    for case in cases:
        key = case["key"].encode()
        chosen = partitioner.partition("t", key, key, b"", b"", _Topic(case["partitions"]))
        assert chosen == case["partition"], case
