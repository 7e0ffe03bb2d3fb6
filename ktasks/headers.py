"""Kafka headers ktasks writes: every name, and who may set, trust, carry and strip each.

Header names starting with ``ktasks-`` or ``kafka_dlt-`` (in any case) are **reserved**
(:data:`RESERVED_PREFIXES`): ktasks writes them, and ``delay()`` /
``apply_async(headers=...)`` refuse them from callers
(:func:`check_caller_headers`).

:data:`RULES` says, one row per header (or family of headers), what each kind
of copy ktasks makes of a record does with it: a retry copy, a delayed copy
(moved to a delay tier), a dead letter, a replay of a dead letter. ``carried``
copies it unchanged, ``dropped`` leaves it out, ``rewritten`` leaves it out and
writes a fresh value. Every function below that builds a copy's headers reads
the table; nothing else decides.

"Trusted on retry topics only": only ktasks writes to its retry topics (a
retry copy, a delayed enqueue, a replay), so a control header found there was
set by ktasks. On a task topic the worker ignores them, whoever produced the
record: a caller cannot bypass the ledger with ``ktasks-force`` or route
retries and dead letters to a topic of its choosing with
``ktasks-origin-topic``. For the same reason a delayed copy carries them only
from a delay tier. This is why ``ktasks dlq replay`` republishes to the first
retry tier of the origin topic rather than to the task topic itself.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .errors import EncodeError

__all__ = [
    "RESERVED_PREFIXES", "H_TASK", "H_ID", "H_VERSION", "H_ORIGIN_TOPIC", "H_LAST_ERROR", "H_REPLAY", "H_FORCE",
    "H_ORIGINAL_TOPIC", "H_ORIGINAL_PARTITION", "H_ORIGINAL_OFFSET", "H_ORIGINAL_TIMESTAMP",
    "H_ORIGINAL_TIMESTAMP_TYPE", "H_ORIGINAL_GROUP", "H_EXC_FQCN", "H_EXC_MESSAGE", "H_EXC_STACKTRACE",
    "H_REASON", "H_ATTEMPTS", "H_HOST", "H_TIME", "H_VALUE_DROPPED", "DEAD_LETTER_PREFIXES",
    "MAX_LAST_ERROR_CHARS", "Copy", "Fate", "Trust", "Rule", "RULES", "rule_of",
    "is_reserved", "check_caller_headers", "Marks", "trusted_marks", "retry_headers", "delay_headers",
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
# -- a dead letter's: Spring Kafka's (KafkaHeaders.DLT_*, with Spring's encodings), then ktasks' own.
# Their values are written and parsed by ktasks.deadletter.record.
H_ORIGINAL_TOPIC = "kafka_dlt-original-topic"
H_ORIGINAL_PARTITION = "kafka_dlt-original-partition"
H_ORIGINAL_OFFSET = "kafka_dlt-original-offset"
H_ORIGINAL_TIMESTAMP = "kafka_dlt-original-timestamp"
H_ORIGINAL_TIMESTAMP_TYPE = "kafka_dlt-original-timestamp-type"
H_ORIGINAL_GROUP = "kafka_dlt-original-consumer-group"
H_EXC_FQCN = "kafka_dlt-exception-fqcn"
H_EXC_MESSAGE = "kafka_dlt-exception-message"
H_EXC_STACKTRACE = "kafka_dlt-exception-stacktrace"
H_REASON = "ktasks-dlt-reason"
H_ATTEMPTS = "ktasks-dlt-attempts"
H_HOST = "ktasks-dlt-host"
H_TIME = "ktasks-dlt-time"
#: On a dead letter published without its value (too large for the broker): why, and its size.
H_VALUE_DROPPED = "ktasks-dlt-value-dropped"


class Copy(enum.Enum):
    """The copies ktasks makes of a consumed record."""

    RETRY = "retry copy"
    DELAY = "delayed copy"
    DEAD_LETTER = "dead letter"
    REPLAY = "replay"


class Fate(enum.Enum):
    """What a copy does with a header of the record it copies."""

    CARRIED = "carried"      # copied unchanged
    DROPPED = "dropped"      # left out
    REWRITTEN = "rewritten"  # left out; the copy writes its own value


class Trust(enum.Enum):
    """On which records the worker acts on a header."""

    NEVER_READ = "never read by the worker"        # informational, or for tools
    RETRY_TOPICS_ONLY = "retry topics only"         # a control header: ktasks alone writes those topics


@dataclass(frozen=True)
class Rule:
    """How one header (or every header starting with ``name`` when ``prefix``) travels."""

    name: str
    prefix: bool
    written_by: str
    trust: Trust
    fates: Mapping[Copy, Fate]

    def matches(self, header_name: str) -> bool:
        return header_name.startswith(self.name) if self.prefix else header_name == self.name


_C, _D, _R = Fate.CARRIED, Fate.DROPPED, Fate.REWRITTEN


def _fates(retry: Fate, delay: Fate, dead_letter: Fate, replay: Fate) -> Mapping[Copy, Fate]:
    return {Copy.RETRY: retry, Copy.DELAY: delay, Copy.DEAD_LETTER: dead_letter, Copy.REPLAY: replay}


#: The rules, one row per header; a name matching no row (a caller's own header) is carried by every copy.
#: A retry copy writes its own origin and error, and a replay's marks apply to that one run only.
RULES: tuple[Rule, ...] = (
    *(Rule(name, False, "every enqueue", Trust.NEVER_READ, _fates(_C, _C, _C, _C))
      for name in (H_TASK, H_ID, H_VERSION)),
    Rule(H_ORIGIN_TOPIC, False, "a retry copy, a delayed enqueue, a dead letter, a replay",
         Trust.RETRY_TOPICS_ONLY, _fates(_R, _R, _R, _R)),
    Rule(H_LAST_ERROR, False, "a retry copy", Trust.NEVER_READ, _fates(_R, _C, _C, _C)),
    *(Rule(name, False, "ktasks dlq replay (--force)", Trust.RETRY_TOPICS_ONLY, _fates(_D, _C, _C, _R))
      for name in (H_REPLAY, H_FORCE)),
    *(Rule(prefix, True, "a dead letter", Trust.NEVER_READ, _fates(_C, _C, _R, _D))
      for prefix in ("kafka_dlt-", "ktasks-dlt-")),
)

#: Prefixes of the headers a dead-lettering adds (Spring's names and ktasks' own).
DEAD_LETTER_PREFIXES = tuple(r.name for r in RULES if r.prefix)


_BY_NAME = {r.name: r for r in RULES if not r.prefix}
_BY_PREFIX = tuple(r for r in RULES if r.prefix)


def rule_of(name: str) -> Rule | None:
    """The rule of a header name, or None for a name ktasks does not write (carried everywhere)."""
    rule = _BY_NAME.get(name)
    if rule is None and name.startswith(DEAD_LETTER_PREFIXES):
        rule = next(r for r in _BY_PREFIX if r.matches(name))
    return rule


def _carried(headers: Iterable[tuple[str, bytes]] | None, copy: Copy, *,
             untrusted: bool = False) -> list[tuple[str, bytes]]:
    """The headers ``copy`` takes over unchanged; ``untrusted`` also leaves out the control headers."""
    kept = []
    for name, value in headers or ():
        rule = rule_of(name)
        if rule is not None and (rule.fates[copy] is not Fate.CARRIED
                                 or (untrusted and rule.trust is Trust.RETRY_TOPICS_ONLY)):
            continue
        kept.append((name, value))
    return kept


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
    kept = _carried(headers, Copy.RETRY)
    kept.append((H_ORIGIN_TOPIC, origin_topic.encode()))
    kept.append((H_LAST_ERROR, error[:MAX_LAST_ERROR_CHARS].encode()))
    return kept


def delay_headers(headers: Iterable[tuple[str, bytes]] | None, origin_topic: str,
                  from_tier: bool) -> list[tuple[str, bytes]]:
    """Headers of a not-yet-due record moved, unchanged, to the delay tier of its time left.

    Control headers are carried only from a delay tier, where ktasks wrote them: from a
    task topic they would come from whoever enqueued the record.
    """
    kept = _carried(headers, Copy.DELAY, untrusted=not from_tier)
    kept.append((H_ORIGIN_TOPIC, origin_topic.encode()))
    return kept


def is_dead_letter_header(name: str) -> bool:
    """True for headers a dead-lettering adds (Spring's ``kafka_dlt-*``, ``ktasks-dlt-*``)."""
    return name.startswith(DEAD_LETTER_PREFIXES)


def strip_dead_letter_headers(headers: Iterable[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """The headers a dead letter carries over: without any an earlier dead-lettering left
    (including ``ktasks-origin-topic``)."""
    return _carried(headers, Copy.DEAD_LETTER)


def replay_headers(headers: Iterable[tuple[str, bytes]], force: bool = False, *,
                   origin_topic: str | None = None) -> list[tuple[str, bytes]]:
    """Headers for replaying a dead letter: the original ones, marked as a replay (of ``origin_topic``)."""
    kept = _carried(headers, Copy.REPLAY)
    if origin_topic is not None:
        kept.append((H_ORIGIN_TOPIC, origin_topic.encode()))
    kept.append((H_REPLAY, b"1"))
    if force:
        kept.append((H_FORCE, b"1"))
    return kept
