"""Hooks as middleware: subclass :class:`Middleware`, override what you need.

Middleware is given to the app (``App(..., middleware=[...])`` or
``app.add_middleware(m)``) and called in order for ``before_*`` hooks and in
reverse order for ``after_*`` hooks, like dramatiq's. Hooks run in the process
where the event happens: enqueue hooks in the caller's process, task hooks in
the worker child that runs the task, worker hooks in the worker parent.
An exception raised by a hook is logged and does not stop the others.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .message import Message
    from .task import TaskContext

logger = logging.getLogger(__name__)

__all__ = ["Middleware", "MiddlewareStack"]


class Middleware:
    """Base class: every hook is a no-op."""

    def before_enqueue(self, message: Message, topic: str) -> None:
        """Called before a message is sent; raising here prevents the send."""

    def after_enqueue(self, message: Message, topic: str) -> None:
        """Called after ``send`` was called (not after the broker acknowledged)."""

    def before_task(self, ctx: TaskContext) -> None:
        """Called in the child right before the task function runs."""

    def after_task(self, ctx: TaskContext, result: Any, exc: BaseException | None) -> None:
        """Called in the child after the task function returned or raised."""

    def on_retry(self, message: Message, delay_s: float, exc: BaseException | None) -> None:
        """Called in the worker parent when a failed task is scheduled again."""

    def on_dead_letter(self, message: Message | None, reason: str) -> None:
        """Called in the worker parent when a record goes to the dead-letter topic."""

    def worker_started(self, worker: Any) -> None:
        """Called in the worker parent once it has joined the group."""

    def worker_stopped(self, worker: Any) -> None:
        """Called in the worker parent at shutdown."""


class MiddlewareStack:
    """Calls one hook on every middleware, isolating failures."""

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        self._items: list[Middleware] = list(middleware)

    def add(self, middleware: Middleware) -> None:
        self._items.append(middleware)

    def __iter__(self):  # type: ignore[no-untyped-def]
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def before(self, hook: str, *args: Any, strict: bool = False) -> None:
        for item in self._items:
            self._call(item, hook, args, strict)

    def after(self, hook: str, *args: Any) -> None:
        for item in reversed(self._items):
            self._call(item, hook, args, False)

    @staticmethod
    def _call(item: Middleware, hook: str, args: tuple[Any, ...], strict: bool) -> None:
        try:
            getattr(item, hook)(*args)
        except Exception:
            if strict:
                raise
            logger.exception("middleware %s.%s failed", type(item).__name__, hook)
