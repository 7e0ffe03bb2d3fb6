"""The worker's seam: hooks as middleware, and the built-in features that use it.

:mod:`.base` is the seam (:class:`Middleware`, :class:`MiddlewareStack`, the
intake decisions); the other modules are built-in middleware, each owning its
task options and making its decision in one place:

* :mod:`.retries`: whether a failed attempt runs again, and when;
* :mod:`.timelimits`: the soft limit in the child, the hard one in the parent;
* :mod:`.idempotency`: the ledger's admit-and-record in the child;
* :mod:`.deadletter`: what a dead letter records, and why a record becomes one;
* :mod:`.ratelimit`: ``rate_limit="100/s"`` per worker process, by deferring at intake.

Every app starts with :func:`default_middleware`; a user's middleware is added
after it (called after it in ``before_*`` hooks and first in ``after_*`` ones).
"""

from __future__ import annotations

from .base import (
    OUTCOMES,
    Decision,
    Defer,
    Dispatched,
    Intake,
    Middleware,
    MiddlewareStack,
    Reject,
    Skip,
    TaskEvent,
)

__all__ = ["Middleware", "MiddlewareStack", "TaskEvent", "OUTCOMES", "Intake", "Skip", "Defer", "Reject",
           "Decision", "Dispatched", "default_middleware"]


def default_middleware() -> list[Middleware]:
    """The built-in middleware every app starts with, in order."""
    from .deadletter import DeadLettering
    from .idempotency import Idempotency
    from .ratelimit import RateLimit
    from .retries import Retries
    from .timelimits import TimeLimits

    return [Retries(), TimeLimits(), Idempotency(), DeadLettering(), RateLimit()]
