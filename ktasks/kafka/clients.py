"""kafka-python's clients and value types as ktasks uses them, and the options each client gets.

``kafka_options`` are checked once against every client's settings
(:func:`check_kafka_options`); each client then gets only the keys it accepts
(:func:`client_config`). kafka-python refuses a setting it does not know
(``KafkaProducer`` with ``ValueError``, the consumer and the admin client with
``KafkaConfigurationError``), and ``kafka_options`` apply to every client, so
a consumer-only option such as ``fetch_max_bytes`` used to make the producer
fail on its first send.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Literal

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, OffsetSpec
from kafka.consumer.subscription_state import ConsumerRebalanceListener
from kafka.partitioner.default import murmur2
from kafka.producer.future import FutureRecordMetadata
from kafka.structs import OffsetAndMetadata

from ..errors import BrokerUnavailable, ConfigurationError
from .auth import authentication_failed
from .errors import KafkaTimeoutError, SaslAuthenticationFailedError

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "ConfigResource", "ConfigResourceType", "FutureRecordMetadata", "KafkaAdminClient", "KafkaConsumer",
    "KafkaProducer", "OffsetAndMetadata", "OffsetSpec", "TopicPartition", "Client", "accepted_options",
    "check_kafka_options", "client_config", "connecting", "murmur2", "reader", "ConsumerRebalanceListener",
]

#: The kinds of kafka-python client ktasks builds.
Client = Literal["consumer", "producer", "admin"]

_ACCEPTED: dict[str, frozenset[str]] = {
    "consumer": frozenset(KafkaConsumer.DEFAULT_CONFIG),
    "producer": frozenset(KafkaProducer.DEFAULT_CONFIG),
    "admin": frozenset(KafkaAdminClient.DEFAULT_CONFIG),
}


def accepted_options(client: Client) -> frozenset[str]:
    """The setting names kafka-python's ``client`` accepts."""
    return _ACCEPTED[client]


def check_kafka_options(options: Mapping[str, Any]) -> None:
    """Refuse a ``kafka_options`` key that no kafka-python client knows (:class:`ConfigurationError`)."""
    known = frozenset().union(*_ACCEPTED.values())
    for key in options:
        if key not in known:
            raise ConfigurationError(f"kafka_options: {key!r} is not a kafka-python setting")


def client_config(settings: Settings, client: Client, ours: Mapping[str, Any] | None = None, *,
                  user_wins: bool = True) -> dict[str, Any]:
    """The keyword arguments for one kafka-python client.

    Servers and security settings, then ``ours`` (what ktasks chooses for this
    client), then the user's ``kafka_options`` when ``user_wins`` (an option
    the user set explicitly overrides ktasks' choice); keys the client does
    not accept are left out, so one ``kafka_options`` serves every client.
    """
    cfg = settings.kafka_common()
    cfg.update(ours or {})
    if user_wins:
        cfg.update(settings.kafka_options)
    accepted = _ACCEPTED[client]
    return {k: v for k, v in cfg.items() if k in accepted}


def reader(settings: Settings, client_id: str) -> KafkaConsumer:
    """A consumer without a group, for tools: it reads by assignment from the earliest offset and never
    commits, so it never disturbs a worker. Raises kafka-python's errors."""
    return KafkaConsumer(**client_config(settings, "consumer", dict(
        client_id=client_id, group_id=None, enable_auto_commit=False, auto_offset_reset="earliest",
        allow_auto_create_topics=False, bootstrap_timeout_ms=settings.send_timeout_ms), user_wins=False))


@contextmanager
def connecting(settings: Settings) -> Iterator[None]:
    """Around building a client: rejected credentials and an unreachable cluster become ktasks errors.

    :class:`~ktasks.errors.AuthenticationFailed` (see :mod:`.auth`) and
    :class:`~ktasks.errors.BrokerUnavailable`; other kafka-python errors pass.
    """
    try:
        yield
    except SaslAuthenticationFailedError as exc:
        raise authentication_failed(exc, settings) from exc
    except KafkaTimeoutError as exc:
        raise BrokerUnavailable(f"Kafka at {settings.bootstrap_servers} unreachable after "
                                f"{settings.send_timeout_ms} ms (send_timeout_ms)") from exc
