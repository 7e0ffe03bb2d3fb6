"""Kafka headers ktasks writes: every name, and who may set, trust, carry and strip each.

Header names starting with ``ktasks-`` or ``kafka_dlt-`` (in any case) are **reserved**
(:data:`RESERVED_PREFIXES`): ktasks writes them, and ``delay()`` /
``apply_async(headers=...)`` refuse them from callers
(:func:`check_caller_headers`). The rules, one row per header:

=========================  ==========================  ======================  ===============  ==================
header                     written by                  the worker trusts it    a retry copy     a dead letter
                                                       on records of
=========================  ==========================  ======================  ===============  ==================
``ktasks-task``,           every enqueue               (informational: the     carried          kept
``ktasks-id``,                                         envelope decides)
``ktasks-v``
``ktasks-origin-topic``    a retry copy, a delayed     retry topics only       rewritten        rewritten
                           enqueue, a dead letter
``ktasks-last-error``      a retry copy                (informational)         rewritten        kept
``ktasks-replay``,         ``ktasks dlq replay``       retry topics only       dropped          kept (a replay
``ktasks-force``           (``--force``)                                                        rewrites them)
``ktasks-dlt-*``,          a dead letter               (never read by the      carried          rewritten
``kafka_dlt-*``                                        worker; tools read
                                                       them)
=========================  ==========================  ======================  ===============  ==================

"Trusted on retry topics only": only ktasks writes to its retry topics (a
retry copy, a delayed enqueue, a replay), so a control header found there was
set by ktasks. On a task topic the worker ignores them, whoever produced the
record: a caller cannot bypass the ledger with ``ktasks-force`` or route
retries and dead letters to a topic of its choosing with
``ktasks-origin-topic``. This is why ``ktasks dlq replay`` republishes to the
first retry tier of the origin topic rather than to the task topic itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import EncodeError

__all__ = [
    "RESERVED_PREFIXES", "H_TASK", "H_ID", "H_VERSION", "H_ORIGIN_TOPIC", "H_LAST_ERROR", "H_REPLAY", "H_FORCE",
    "MAX_LAST_ERROR_CHARS", "is_reserved", "check_caller_headers", "Marks", "trusted_marks", "retry_headers",
    "is_dead_letter_header", "strip_dead_letter_headers", "replay_headers", "value_of",
]

#: Prefixes of the names only ktasks may write: its own, and Spring Kafka's dead-letter ones.
RESERVED_PREFIXES = ("ktasks-", "kafka_dlt-")

# -- written at every enqueue (so tools can route and list without decoding) --------------
H_TASK = "ktasks-task"
H_ID = "ktasks-id"
H_VERSION = "ktasks-v"
# -- control headers: trusted only on ktasks' retry topics ----------------------------------
#: The task topic a retry copy, a delayed task or a replay belongs to (and a dead letter replays to).
H_ORIGIN_TOPIC = "ktasks-origin-topic"
#: Set to ``1`` on records republished by ``ktasks dlq replay``: a fresh retry budget, a poisoned key runs.
H_REPLAY = "ktasks-replay"
#: Set to ``1`` by ``ktasks dlq replay --force``: run even if the ledger recorded a success.
H_FORCE = "ktasks-force"
# -- informational ---------------------------------------------------------------------------
#: ``Type: message`` of the failure that made a retry copy, cut to :data:`MAX_LAST_ERROR_CHARS`.
H_LAST_ERROR = "ktasks-last-error"
MAX_LAST_ERROR_CHARS = 1000

#: Prefixes of the headers a dead-lettering adds (Spring's names and ktasks' own).
DEAD_LETTER_PREFIXES = ("kafka_dlt-", "ktasks-dlt-")

# What a retry copy does not take over from the record it copies: it writes its own origin and
# error, and a replay's marks apply to that one run only.
_NOT_CARRIED_TO_RETRY = frozenset({H_ORIGIN_TOPIC, H_FORCE, H_REPLAY, H_LAST_ERROR})


def is_reserved(name: str) -> bool:
    """True for a header name only ktasks may write (see :data:`RESERVED_PREFIXES`), in any case."""
    return name.lower().startswith(RESERVED_PREFIXES)


def check_caller_headers(headers: Mapping[str, object] | None) -> None:
    """Refuse reserved names among the headers a caller passes at enqueue (:class:`EncodeError`)."""
    for name in headers or ():
        if isinstance(name, str) and is_reserved(name):
            raise EncodeError(f"header {name!r} is reserved for ktasks (names starting with "
                              f"{' or '.join(repr(p) for p in RESERVED_PREFIXES)}); use another name")


def value_of(headers: Iterable[tuple[str, bytes | None]] | None, name: str) -> str | None:
    """The last value of a header, decoded as UTF-8, or None."""
    found = None
    for key, value in headers or ():
        if key == name and value is not None:
            found = value.decode("utf-8", "replace")
    return found


@dataclass(frozen=True)
class Marks:
    """What the control headers of one record ask of the worker, once trust is decided."""

    origin_topic: str | None = None
    replay: bool = False
    force: bool = False


def trusted_marks(headers: Iterable[tuple[str, bytes | None]] | None, on_ktasks_topic: bool) -> Marks:
    """The control headers of a consumed record, honoured only if it came from a ktasks retry topic."""
    if not on_ktasks_topic:
        return Marks()
    return Marks(origin_topic=value_of(headers, H_ORIGIN_TOPIC) or None,
                 replay=value_of(headers, H_REPLAY) == "1", force=value_of(headers, H_FORCE) == "1")


def retry_headers(headers: Iterable[tuple[str, bytes]] | None, origin_topic: str,
                  error: str) -> list[tuple[str, bytes]]:
    """Headers of a retry copy: the record's, minus the control headers, plus its origin and error."""
    kept = [(k, v) for k, v in headers or () if k not in _NOT_CARRIED_TO_RETRY]
    kept.append((H_ORIGIN_TOPIC, origin_topic.encode()))
    kept.append((H_LAST_ERROR, error[:MAX_LAST_ERROR_CHARS].encode()))
    return kept


def delay_headers(headers: Iterable[tuple[str, bytes]] | None, origin_topic: str,
                  from_tier: bool) -> list[tuple[str, bytes]]:
    """Headers of a not-yet-due record moved, unchanged, to the delay tier of its time left.

    Control headers are carried only from a delay tier, where ktasks wrote them: from a
    task topic they would come from whoever enqueued the record.
    """
    dropped = {H_ORIGIN_TOPIC} if from_tier else {H_ORIGIN_TOPIC, H_FORCE, H_REPLAY}
    kept = [(k, v) for k, v in headers or () if k not in dropped]
    kept.append((H_ORIGIN_TOPIC, origin_topic.encode()))
    return kept


def is_dead_letter_header(name: str) -> bool:
    """True for headers a dead-lettering adds (Spring's ``kafka_dlt-*``, ``ktasks-dlt-*``)."""
    return name.startswith(DEAD_LETTER_PREFIXES)


def strip_dead_letter_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers without any left by a dead-lettering (including ``ktasks-origin-topic``)."""
    return [(k, v) for k, v in headers if not is_dead_letter_header(k) and k != H_ORIGIN_TOPIC]


def replay_headers(headers: Iterable[tuple[str, bytes]], force: bool = False, *,
                   origin_topic: str | None = None) -> list[tuple[str, bytes]]:
    """Headers for replaying a dead letter: the original ones, marked as a replay (of ``origin_topic``)."""
    kept = [(k, v) for k, v in strip_dead_letter_headers(headers) if k not in (H_REPLAY, H_FORCE)]
    if origin_topic is not None:
        kept.append((H_ORIGIN_TOPIC, origin_topic.encode()))
    kept.append((H_REPLAY, b"1"))
    if force:
        kept.append((H_FORCE, b"1"))
    return kept
