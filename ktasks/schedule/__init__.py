"""Time on Kafka: revoke, expiry, ETAs of any length and periodic tasks (docs/scheduling.md).

All of it is middleware on the worker's seam (:mod:`ktasks.middleware`) plus
compacted topics that hold the state (:mod:`ktasks.schedule.topics`).
"""

from __future__ import annotations

from ..middleware import Middleware
from .eta import SchedulerMiddleware
from .expiry import ExpiryMiddleware
from .revoke import RevokeMiddleware, revoke

__all__ = ["default_middleware", "ExpiryMiddleware", "RevokeMiddleware", "SchedulerMiddleware", "revoke"]


def default_middleware() -> list[Middleware]:
    """What every app gets first in its stack: revocations are checked before anything else decides."""
    return [RevokeMiddleware(), ExpiryMiddleware(), SchedulerMiddleware()]
