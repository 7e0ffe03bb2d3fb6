"""Deterministic fault injection, for tests. Off unless ``KTASKS_FAULTS`` (or the ``faults`` setting) is set.

Tests need to stop a worker at an exact point (say, after a task's ledger
write and before its offset commit) rather than hope a random kill lands
there. The worker calls :func:`point` at named places; the spec decides what
happens there::

    KTASKS_FAULTS="after_ledger_write=kill-worker"
    KTASKS_FAULTS="commit=raise-retriable*3,dead_letter_publish=raise"

Actions:

``kill-worker``
    SIGKILL the worker parent and the calling process (a host dying).
``exit``
    ``os._exit(70)`` in the calling process (a child dying).
``raise`` / ``raise-retriable``
    raise :class:`FaultInjected` (``retriable`` False / True).
``sleep:<seconds>``
    block, to widen a window.

A trailing ``*N`` fires the fault only the first N times in this process;
``@<path>`` fires it only if ``<path>`` does not exist yet and creates it, so a
fault fires once across restarts of a worker. Named points are listed in
``docs/failure-semantics.md``.
"""

from __future__ import annotations

import logging
import os
import signal
import time
from dataclasses import dataclass

from .errors import KtasksError

logger = logging.getLogger(__name__)

__all__ = ["FaultInjected", "point", "configure", "POINTS"]

#: Every point the worker calls, so a typo in a spec is an error, not a silent no-op.
POINTS = frozenset({
    "startup_metadata",      # parent, at start-up, before fetching its topics' metadata (a broker lost there)
    "before_task",           # child, before the task function runs (after the ledger's start record)
    "after_task",            # child, after the task function returned, before the ledger's success record
    "after_ledger_write",    # child, after the success record is durable, before reporting to the parent
    "before_commit",         # parent, before an offset commit is sent
    "commit",                # parent, in place of the commit call (raise-retriable simulates broker errors)
    "after_commit",          # parent, after a commit succeeded
    "transaction_prepared",  # parent (--transactional): records flushed, offsets in the transaction, not committed
    "retry_publish",         # parent, before a retry message is published
    "dead_letter_publish",   # parent, before a dead-letter record is published
    "relay_after_publish",   # outbox relay, after Kafka acknowledged a batch, before its rows are deleted
})


class FaultInjected(KtasksError):
    """Raised at a fault point whose action is ``raise``."""

    def __init__(self, point: str, retriable: bool) -> None:
        super().__init__(f"fault injected at {point!r}")
        self.point = point
        self.retriable = retriable


@dataclass
class _Fault:
    action: str
    remaining: int | None
    marker: str | None


_faults: dict[str, _Fault] | None = None
_spec_seen: str | None = None


def _parse(spec: str) -> dict[str, _Fault]:
    faults: dict[str, _Fault] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, action = part.partition("=")
        name = name.strip()
        if name not in POINTS:
            raise ValueError(f"KTASKS_FAULTS: unknown fault point {name!r}; known: {sorted(POINTS)}")
        action = action.strip() or "raise"
        marker = None
        if "@" in action:
            action, marker = action.split("@", 1)
        remaining = None
        if "*" in action:
            action, count = action.split("*", 1)
            remaining = int(count)
        if action not in ("kill-worker", "exit", "raise", "raise-retriable") and not action.startswith("sleep:"):
            raise ValueError(f"KTASKS_FAULTS: unknown action {action!r} at {name!r}")
        faults[name] = _Fault(action, remaining, marker)
    return faults


def configure(spec: str | None) -> None:
    """Set the fault spec for this process (the worker passes its ``faults`` setting)."""
    global _faults, _spec_seen
    _spec_seen = spec
    _faults = _parse(spec) if spec else {}
    if _faults:
        logger.warning("FAULT INJECTION ACTIVE: %s", spec)


def point(name: str, worker_pid: int | None = None) -> None:
    """Run the fault configured at ``name``, if any. Cheap when faults are off."""
    if _faults is None:
        configure(os.environ.get("KTASKS_FAULTS"))
    assert _faults is not None
    fault = _faults.get(name)
    if fault is None:
        return
    if fault.remaining is not None:
        if fault.remaining <= 0:
            return
        fault.remaining -= 1
    if fault.marker is not None:
        try:
            fd = os.open(fault.marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        os.close(fd)
    logger.warning("fault point %s: %s", name, fault.action)
    action = fault.action
    if action == "kill-worker":
        if worker_pid and worker_pid != os.getpid():
            os.kill(worker_pid, signal.SIGKILL)
        os.kill(os.getpid(), signal.SIGKILL)
    elif action == "exit":
        os._exit(70)
    elif action.startswith("sleep:"):
        time.sleep(float(action.split(":", 1)[1]))
    else:
        raise FaultInjected(name, retriable=(action == "raise-retriable"))
