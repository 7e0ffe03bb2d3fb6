"""The canvas: signatures, ``chain``, ``group`` and ``chord``.

A :class:`Signature` is a task call not sent yet (``add.s(2)``); ``si`` makes
it immutable (a chain's previous result is not prepended). Workflows travel in
the task messages' ``meta`` as data (task name, arguments, pre-assigned id),
never as code: the worker that finishes a chain step sends the next one, so no
process has to wait for a chain to move on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import ConfigurationError
from ..message import new_id
from .handles import AsyncResult, GroupResult
from .records import META_CHAIN, META_CHORD, META_FINAL, META_REPLY, META_STORE

if TYPE_CHECKING:
    from ..app import App
    from ..message import Message
    from ..task import Task

logger = logging.getLogger(__name__)

__all__ = ["Signature", "chain", "group", "chord", "enqueue_next"]


class Signature:
    """A task call to send later: ``task.s(*args, **kwargs)`` or, immutable, ``task.si(...)``."""

    def __init__(self, task: Task[..., Any], args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                 *, immutable: bool = False, options: Mapping[str, Any] | None = None) -> None:
        self.task = task
        self.args = list(args)
        self.kwargs = dict(kwargs or {})
        self.immutable = immutable
        self.options = dict(options or {})

    @property
    def app(self) -> App:
        return self.task.app

    def delay(self, *args: Any, **kwargs: Any) -> Any:
        """Send it, with ``args`` prepended (unless immutable) and ``kwargs`` merged."""
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None,
                    **options: Any) -> Any:
        call_args = self.args if self.immutable else [*args, *self.args]
        return self.task.apply_async(call_args, {**self.kwargs, **(kwargs or {})}, **{**self.options, **options})

    def to_data(self, task_id: str) -> dict[str, Any]:
        """The signature as message data (``meta``), with the id its task will run under."""
        return {"task": self.task.name, "args": self.args, "kwargs": self.kwargs, "id": task_id,
                "imm": self.immutable}

    def __repr__(self) -> str:
        return f"{self.task.name}.{'si' if self.immutable else 's'}(*{self.args!r}, **{self.kwargs!r})"


def _reply(app: App, expected: str) -> dict[str, Any]:
    """``meta`` giving the caller's reply partition, and expect ``expected`` on it (nothing in eager mode)."""
    if app.settings.eager:
        return {}
    from .replies import reader_for

    reader = reader_for(app)
    reader.expect(expected)
    return {META_REPLY: reader.partition}


def send_data(app: App, data: Mapping[str, Any], prefix: Sequence[Any], meta: dict[str, Any]) -> Any:
    """Send a signature given as data, ``prefix`` prepended to its arguments unless immutable."""
    args = list(data["args"]) if data.get("imm") else [*prefix, *data["args"]]
    return app.send_task(data["task"], args=args, kwargs=dict(data["kwargs"]), task_id=data["id"], meta=meta)


class chain:  # noqa: N801 - Celery's name
    """Steps run one after another, each given the previous one's result first: ``chain(a.s(1), b.s(), c.s())``."""

    def __init__(self, *steps: Signature) -> None:
        if not steps:
            raise ConfigurationError("chain() needs at least one signature")
        for step in steps:
            if not isinstance(step, Signature):
                raise ConfigurationError(f"chain() takes signatures (task.s(...)), got {type(step).__name__}")
        self.steps = list(steps)

    def delay(self, *args: Any, **kwargs: Any) -> AsyncResult:
        return self.apply_async(args, kwargs)

    def apply_async(self, args: Sequence[Any] = (), kwargs: Mapping[str, Any] | None = None) -> AsyncResult:
        """Send the first step; the handle waits for the last one (a failing step fails it)."""
        app = self.steps[0].app
        ids = [new_id() for _ in self.steps]
        final = ids[-1]
        meta: dict[str, Any] = {**_reply(app, final), META_FINAL: final}
        rest = [s.to_data(i) for s, i in zip(self.steps[1:], ids[1:], strict=True)]
        if rest:
            meta[META_CHAIN] = rest
        else:
            meta[META_STORE] = True
        first = self.steps[0]
        call_args = first.args if first.immutable else [*args, *first.args]
        app.send_task(first.task.name, args=call_args, kwargs={**first.kwargs, **(kwargs or {})}, task_id=ids[0],
                      meta=meta)
        return AsyncResult(app, final, task_name=self.steps[-1].task.name, via_reply=True)


class group:  # noqa: N801 - Celery's name
    """Members run in parallel; ``get()`` gives their results in order: ``group(a.s(1), a.s(2))``."""

    def __init__(self, *members: Signature) -> None:
        if len(members) == 1 and not isinstance(members[0], Signature) and hasattr(members[0], "__iter__"):
            members = tuple(members[0])     # group([...]) and group(generator), as in Celery
        for member in members:
            if not isinstance(member, Signature):
                raise ConfigurationError(f"group() takes signatures (task.s(...)), got {type(member).__name__}")
        self.members = list(members)

    def delay(self) -> GroupResult:
        return self.apply_async()

    def apply_async(self) -> GroupResult:
        results = []
        for member in self.members:
            task_id = new_id()
            meta = {**_reply(member.app, task_id), META_STORE: True}
            send_data(member.app, member.to_data(task_id), (), meta)
            results.append(AsyncResult(member.app, task_id, task_name=member.task.name, via_reply=True))
        return GroupResult(results)


class chord:  # noqa: N801 - Celery's name
    """``chord(group(...), callback.s())``: the callback runs once, given every member's result in order.

    The members' outcomes are counted in Kafka by the chord joiner of the
    worker that owns the chord's partition of ``<app>.chords`` (see
    :mod:`ktasks.results.chord`). A failing member fails the chord: the
    callback does not run and ``get()`` raises ``TaskFailed`` naming it.
    """

    def __init__(self, header: group | Sequence[Signature], body: Signature) -> None:
        self.header = header if isinstance(header, group) else group(*header)
        if not self.header.members:
            raise ConfigurationError("chord() needs at least one member")
        if not isinstance(body, Signature):
            raise ConfigurationError(f"chord() callback must be a signature, got {type(body).__name__}")
        self.body = body
        #: The chord's id (its records' key on ``<app>.chords``), set when it is sent.
        self.id: str | None = None

    def delay(self) -> AsyncResult:
        return self.apply_async()

    def apply_async(self) -> AsyncResult:
        from .chord import start_chord

        app = self.body.app
        chord_id, callback_id = new_id(), new_id()
        self.id = chord_id
        reply = _reply(app, callback_id)
        start_chord(app, chord_id, len(self.header.members), self.body.to_data(callback_id), reply)
        for i, member in enumerate(self.header.members):
            send_data(member.app, member.to_data(new_id()), (), {META_CHORD: [chord_id, i]})
        return AsyncResult(app, callback_id, task_name=self.body.task.name, via_reply=True)


def enqueue_next(app: App, message: Message, value: Any) -> Any:
    """Send the chain step after ``message`` (which returned ``value``), carrying the rest of the chain."""
    rest = list(message.meta[META_CHAIN])
    step, rest = rest[0], rest[1:]
    meta: dict[str, Any] = {k: message.meta[k] for k in (META_REPLY, META_FINAL) if k in message.meta}
    if rest:
        meta[META_CHAIN] = rest
    else:
        meta[META_STORE] = True
    logger.debug("chain: %s[%s] succeeded; sending %s[%s]", message.task, message.id, step["task"], step["id"])
    return send_data(app, step, (value,), meta)
