"""kafka-python's errors that ktasks catches, re-exported, and how to read them."""

from __future__ import annotations

from kafka.errors import (
    CommitFailedError,
    KafkaConfigurationError,
    KafkaError,
    KafkaTimeoutError,
    MessageSizeTooLargeError,
    RebalanceInProgressError,
    RecordListTooLargeError,
    SaslAuthenticationFailedError,
    TopicAlreadyExistsError,
)

__all__ = [
    "CommitFailedError", "KafkaConfigurationError", "KafkaError", "KafkaTimeoutError", "MessageSizeTooLargeError",
    "RebalanceInProgressError", "RecordListTooLargeError", "SaslAuthenticationFailedError",
    "TopicAlreadyExistsError", "is_too_large",
]


def is_too_large(exc: BaseException | None) -> bool:
    """True when a send failed because the record is too large for the broker (or the producer).

    That is final for that record: sending it again fails the same way.
    """
    while exc is not None:
        if isinstance(exc, (MessageSizeTooLargeError, RecordListTooLargeError)):
            return True
        exc = exc.__cause__
    return False
