"""The parent-child protocol: what crosses the pipe between the worker parent and a child.

Every message is msgpack (never pickle: messages carry data, not code).

Parent to child
    a batch: a list of jobs, each ``[seq, value, topic, partition, offset, force,
    soft_limit_s, replay]`` (:func:`job_wire`); or ``["stop"]``, to exit after the
    current batch.

Child to parent
    ``["ready", pid]`` once the app is imported; ``["results", [result, ...]]``,
    each result ``[seq, status, duration_s, detail, exc_type, exc_message,
    stacktrace]`` where ``detail`` is the retry delay (``RETRY``) or the dead
    letter's reason (``DEAD``). A transactional worker's child appends the
    records the task sent, held for the transaction (``OK`` and ``DEAD``):
    ``[[topic, value, key, [[header, value], ...], partition], ...]``.

The child also shows which job it runs, and since when, in a shared array of
three doubles ``[seq, start (monotonic) or 0, seq taken back]``
(:meth:`ChildProc.running`). A job the parent handed to a busy child ahead of
time may be taken back before it starts (:meth:`ChildProc.take_back`): under
a lock shared with that child, the parent writes its seq in the third slot
unless the child already wrote it in the first, and the child skips it,
sending nothing for it, when it reads it from the pipe.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..middleware import timelimits

if TYPE_CHECKING:
    from .partitions import Job

__all__ = ["OK", "SKIP", "RETRY", "DEAD", "POISON", "READY", "RESULTS", "STOP", "OUTCOME", "job_wire",
           "outcome_of"]

# Result statuses, the second field of each result.
OK, SKIP, RETRY, DEAD, POISON = "ok", "skip", "retry", "dead", "poison"

# Message kinds.
READY, RESULTS, STOP = "ready", "results", "stop"

#: A child's result status -> the outcome middleware sees (ktasks.middleware.OUTCOMES).
OUTCOME = {OK: "succeeded", SKIP: "skipped", RETRY: "retried", DEAD: "failed", POISON: "dead_lettered"}


def job_wire(job: Job) -> list[Any]:
    """The wire form of one job handed to a child."""
    return [job.seq, job.value or job.record.value, job.record.topic, job.record.partition, job.offset,
            job.force, timelimits.soft_limit_s(job.task), job.replay]


def outcome_of(result: list[Any]) -> str:
    """The outcome middleware sees for a child's ``result``."""
    status = result[1]
    if status in (SKIP, DEAD) and result[3] == "expired":
        return "expired"
    return OUTCOME.get(status, status)
