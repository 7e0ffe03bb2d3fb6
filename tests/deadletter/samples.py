"""Sample dead letters for the tests of ktasks.deadletter."""

from __future__ import annotations

from typing import Any

from ktasks.deadletter import DeadLetter, exception_info
from ktasks.message import Message, encode, headers_of

TIMEOUT_S = 20.0


def envelope(task: str = "billing.charge", args: list[Any] | None = None
             ) -> tuple[Message, bytes, list[tuple[str, bytes]]]:
    """A task envelope as enqueued: the message, its encoded value and its headers."""
    message = Message(task=task, args=args if args is not None else [42], kwargs={"currency": "EUR"})
    return message, encode(message), headers_of(message, {"trace": "abc"})


def boom() -> BaseException:
    """A raised exception, with its traceback."""
    try:
        raise ValueError("card declined")
    except ValueError as exc:
        return exc


def sample(topic: str = "orders", partition: int = 2, value: bytes | None = None,
           headers: list[tuple[str, bytes]] | None = None, **kw: Any) -> DeadLetter:
    """A dead letter of a failed ``billing.charge``; ``kw`` overrides any field."""
    message, encoded, hdrs = envelope()
    exc_type, exc_message, stack = exception_info(boom())
    fields: dict[str, Any] = dict(
        value=encoded if value is None else value, key=b"customer-7",
        headers=hdrs if headers is None else headers, topic=topic, partition=partition, offset=1234,
        timestamp_ms=1_700_000_000_123, origin_topic=topic, reason="retries-exhausted",
        exc_type=exc_type, exc_message=exc_message, stacktrace=stack, attempts=4, group="billing",
        host="worker-1", timestamp_type=0,
    )
    fields.update(kw)
    return DeadLetter(**fields)
