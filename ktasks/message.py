"""The wire format: a msgpack envelope plus Kafka headers.

A task message carries data only. Its value is a msgpack map::

    {"v": 1, "id": str, "task": str, "args": [...], "kwargs": {...},
     "attempt": int, "ikey": str | None, "created": float, "due": float | None,
     "exp": float (optional)}

and its headers repeat the task name and id (``ktasks-task``, ``ktasks-id``) so
tools can route and list messages without decoding them. Nothing here can name
code to import or run: the worker looks the task name up in its registry and
runs only registered tasks.

Beside msgpack's own types (None, bool, int, float, str, bytes, list, dict),
arguments may be :class:`datetime.datetime`, :class:`datetime.date`,
:class:`decimal.Decimal` and :class:`uuid.UUID`; they come back as the same
types. Tuples come back as lists, as in JSON.

Limits, the same at both ends (:func:`encode` refuses what :func:`decode`
would refuse, so nothing is sent only to be dead-lettered as undecodable):
integers from :data:`MIN_INT` to :data:`MAX_INT`, and lists and maps nested
at most :data:`MAX_ARG_DEPTH` deep inside an argument (:data:`MAX_DEPTH` in
the whole envelope, whose map and argument list take two levels).
"""

from __future__ import annotations

import datetime as _dt
import decimal
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import msgpack

from . import headers as headers_mod
from .errors import DecodeError, EncodeError

__all__ = ["FORMAT_VERSION", "Message", "encode", "decode", "headers_of", "HEADER_TASK", "HEADER_ID",
           "new_id", "MAX_DEPTH", "MAX_ARG_DEPTH", "MIN_INT", "MAX_INT"]

FORMAT_VERSION = 1
HEADER_TASK = headers_mod.H_TASK
HEADER_ID = headers_mod.H_ID
HEADER_VERSION = headers_mod.H_VERSION

#: Deepest nesting of lists and maps in an envelope that msgpack's decoder accepts (its stack size).
MAX_DEPTH = 1024
#: Deepest nesting inside one argument: the envelope's map and its args list (or kwargs map) take two.
MAX_ARG_DEPTH = MAX_DEPTH - 2
#: The integers msgpack can carry: signed 64-bit below zero, unsigned 64-bit above.
MIN_INT = -(2 ** 63)
MAX_INT = 2 ** 64 - 1

# msgpack extension type codes for the types beyond msgpack's own.
_EXT_DATETIME = 1
_EXT_DATE = 2
_EXT_DECIMAL = 3
_EXT_UUID = 4
_EXT_NAIVE_DATETIME = 5


_ID_BATCH = 256
_id_lock = threading.Lock()
_id_pool: list[bytes] = []


def new_id() -> str:
    """A fresh task id: a random (version 4) UUID as 32 hex digits, like ``uuid.uuid4().hex``.

    ``os.urandom`` is read 256 ids at a time, since one system call per
    ``delay()`` is a measurable part of the enqueue path. The pool is emptied
    in a forked child, so parent and child never hand out the same id.
    """
    with _id_lock:
        if not _id_pool:
            raw = os.urandom(16 * _ID_BATCH)
            _id_pool.extend(raw[i:i + 16] for i in range(0, len(raw), 16))
        b = bytearray(_id_pool.pop())
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    return b.hex()


def _reset_ids_after_fork() -> None:
    global _id_lock
    _id_lock = threading.Lock()
    _id_pool.clear()


os.register_at_fork(after_in_child=_reset_ids_after_fork)


@dataclass
class Message:
    """One task invocation as it travels through Kafka."""

    task: str
    args: list[Any] = field(default_factory=list)
    kwargs: dict[str, Any] = field(default_factory=dict)
    id: str = field(default_factory=new_id)
    attempt: int = 0
    idempotency_key: str | None = None
    created: float = field(default_factory=time.time)
    due: float | None = None
    expires: float | None = None
    #: ktasks' own bookkeeping that travels with the task (results, canvas); see docs/protocol.md.
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def ledger_key(self) -> str:
        """The key the ledger records this execution under, together with the task name.

        A key names one execution *of this task*: the ledger scopes it by
        :attr:`task`, so the same ``idempotency_key`` given to two tasks names
        two executions.
        """
        return self.idempotency_key or self.id

    def to_dict(self) -> dict[str, Any]:
        body = {
            "v": FORMAT_VERSION, "id": self.id, "task": self.task, "args": self.args,
            "kwargs": self.kwargs, "attempt": self.attempt, "ikey": self.idempotency_key,
            "created": self.created, "due": self.due,
        }
        if self.expires is not None:
            body["exp"] = self.expires  # only when set: older workers ignore it, sizes stay the same
        if self.meta:
            body["meta"] = self.meta    # likewise only when set
        return body


def _default(obj: Any) -> Any:
    if isinstance(obj, _dt.datetime):
        if obj.tzinfo is None:
            return msgpack.ExtType(_EXT_NAIVE_DATETIME, obj.isoformat().encode())
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if isinstance(obj, _dt.date):
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if isinstance(obj, decimal.Decimal):
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if isinstance(obj, uuid.UUID):
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if isinstance(obj, (set, frozenset)):
        raise TypeError(f"a {type(obj).__name__} is not encodable (pass a list)")
    if isinstance(obj, int):  # msgpack hands us only the ints it cannot carry
        raise OverflowError(f"integer {obj} is out of range (msgpack carries {MIN_INT} to {MAX_INT}; "
                            "pass a larger number as a str or a Decimal)")
    raise TypeError(f"object of type {type(obj).__name__} is not encodable")


def _ext_hook(code: int, data: bytes) -> Any:
    if code in (_EXT_DATETIME, _EXT_NAIVE_DATETIME):
        return _dt.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return _dt.date.fromisoformat(data.decode())
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    raise DecodeError(f"unknown msgpack extension type {code}")


_packer_kwargs: dict[str, Any] = {"default": _default, "use_bin_type": True, "datetime": False}


def pack(obj: Any) -> bytes:
    """msgpack with ktasks' extension types; raises :class:`TypeError` on what it cannot encode."""
    return bytes(msgpack.packb(obj, **_packer_kwargs))


def unpack(data: bytes) -> Any:
    """Inverse of :func:`pack`. Map keys that were tuples come back as tuples, not lists."""
    try:
        return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)
    except TypeError as exc:
        if "unhashable" not in str(exc):
            raise
    # A map key was a tuple, which msgpack stores as an array: rebuild it as a tuple.
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False,
                           object_pairs_hook=_pairs_to_dict)


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


def _pairs_to_dict(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    return {_hashable(k): v for k, v in pairs}


def encode(message: Message) -> bytes:
    """Encode a message, naming the first argument that cannot be encoded.

    Raises :class:`~ktasks.errors.EncodeError` (a ``TypeError``) naming the task
    and the argument, so nothing unencodable ever reaches Kafka.
    """
    _check_envelope(message)
    try:
        data = pack(message.to_dict())
    except (TypeError, ValueError, OverflowError) as exc:
        raise EncodeError(_explain(message, exc)) from exc
    # Nesting MAX_DEPTH deep takes a byte per level at least: only larger values can be too deep.
    if len(data) > MAX_DEPTH:
        _check_depth(message)
    return data


def _check_depth(message: Message) -> None:
    """Refuse an argument nested deeper than :func:`decode` accepts (msgpack encodes deeper)."""
    for where, value in _arguments(message):
        depth = _depth(value)
        if depth > MAX_ARG_DEPTH:
            raise EncodeError(f"task {message.task!r}: {where} nests lists or maps {depth} deep; "
                              f"at most {MAX_ARG_DEPTH} can be decoded")


def _arguments(message: Message) -> Iterator[tuple[str, Any]]:
    for i, value in enumerate(message.args):
        yield f"positional argument {i}", value
    for key, value in message.kwargs.items():
        yield f"keyword argument {key!r}", value


def _children(value: Any) -> Iterable[tuple[str, Any]]:
    if isinstance(value, (list, tuple)):
        return ((f"[{i}]", v) for i, v in enumerate(value))
    if isinstance(value, dict):
        children: list[tuple[str, Any]] = []
        for key, item in value.items():
            children.append((f"[{key!r}]", item))
            if isinstance(key, tuple):  # a tuple map key is encoded as a list: it nests too
                children.append((f" key {key!r}", key))
        return children
    return ()


def _depth(value: Any) -> int:
    """How deep lists, tuples and maps nest in ``value`` (0 for a scalar); iterative, so any depth works."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, tuple, dict)):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for _, child in _children(item))
    return deepest


def _find_int_out_of_range(value: Any, path: str) -> str | None:
    """The path of the first integer in ``value`` that msgpack cannot carry, or None."""
    stack = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, int) and not isinstance(item, bool) and not MIN_INT <= item <= MAX_INT:
            return where
        stack.extend(reversed([(child, where + step) for step, child in _children(item)]))
    return None


def _check_envelope(message: Message) -> None:
    """Reject what msgpack would encode but :func:`decode` refuses, so it is never sent."""
    if not isinstance(message.task, str) or not isinstance(message.id, str):
        raise EncodeError(f"task name and id must be str, got {message.task!r} and {message.id!r}")
    if message.idempotency_key is not None and not isinstance(message.idempotency_key, str):
        raise EncodeError(f"task {message.task!r}: idempotency_key must be str, "
                          f"got {type(message.idempotency_key).__name__}")
    if not isinstance(message.args, list) or not isinstance(message.kwargs, dict):
        raise EncodeError(f"task {message.task!r}: args must be a list and kwargs a dict")
    for key in message.kwargs:
        if not isinstance(key, str):
            raise EncodeError(f"task {message.task!r}: keyword {key!r} cannot be encoded: "
                              "keyword names must be str")
    if not isinstance(message.attempt, int) or isinstance(message.attempt, bool):
        raise EncodeError(f"task {message.task!r}: attempt must be int, got {message.attempt!r}")


def _explain(message: Message, exc: BaseException) -> str:
    if "recursion limit" in str(exc):  # msgpack's encoder gives up a little deeper than its decoder
        for where, value in _arguments(message):
            depth = _depth(value)
            if depth > MAX_ARG_DEPTH:
                return (f"task {message.task!r}: {where} nests lists or maps {depth} deep; "
                        f"at most {MAX_ARG_DEPTH} can be decoded")
    if isinstance(exc, OverflowError):
        for i, value in enumerate(message.args):
            path = _find_int_out_of_range(value, f"args[{i}]")
            if path is not None:
                return f"task {message.task!r}: positional argument {i} cannot be encoded: {path}: {exc}"
        for key, value in message.kwargs.items():
            path = _find_int_out_of_range(value, f"kwargs[{key!r}]")
            if path is not None:
                return f"task {message.task!r}: keyword argument {key!r} cannot be encoded: {path}: {exc}"
    culprit = "an argument"
    for i, value in enumerate(message.args):
        if not _encodable(value):
            culprit = f"positional argument {i}"
            break
    else:
        for key, value in message.kwargs.items():
            if not isinstance(key, str):
                culprit = f"keyword {key!r} (keyword names must be str)"
                break
            if not _encodable(value):
                culprit = f"keyword argument {key!r}"
                break
        else:
            if message.idempotency_key is not None and not isinstance(message.idempotency_key, str):
                culprit = "idempotency_key"
    return f"task {message.task!r}: {culprit} cannot be encoded with msgpack: {exc}"


def _encodable(value: Any) -> bool:
    try:
        pack(value)
    except (TypeError, ValueError, OverflowError):
        return False
    return True


_REQUIRED: Mapping[str, type | tuple[type, ...]] = {
    "id": str, "task": str, "args": list, "kwargs": dict, "attempt": int,
    "created": (int, float),
}


def decode(data: bytes | None) -> Message:
    """Decode and validate a record value; raises :class:`~ktasks.errors.DecodeError` with the reason."""
    if data is None:
        raise DecodeError("record has no value (tombstone)")
    try:
        body = unpack(data)
    except DecodeError:
        raise
    except msgpack.StackError as exc:
        # The prefix is the one docs/protocol.md gives for the "too-deep" rejection.
        raise DecodeError(f"value is not msgpack: StackError: lists or maps nested deeper than {MAX_DEPTH} "
                          "levels") from exc
    except Exception as exc:  # msgpack raises several unrelated types on garbage
        raise DecodeError(f"value is not msgpack: {type(exc).__name__}: {exc}") from exc
    if not isinstance(body, dict):
        raise DecodeError(f"value is a msgpack {type(body).__name__}, not a ktasks envelope")
    version = body.get("v")
    if version != FORMAT_VERSION:
        raise DecodeError(f"unsupported format version {version!r} (this worker reads {FORMAT_VERSION})")
    for name, kind in _REQUIRED.items():
        if name not in body:
            raise DecodeError(f"envelope is missing field {name!r}")
        if not isinstance(body[name], kind) or isinstance(body[name], bool):
            raise DecodeError(f"envelope field {name!r} has type {type(body[name]).__name__}")
    if not all(isinstance(k, str) for k in body["kwargs"]):
        raise DecodeError("envelope kwargs have non-string keys")
    due = body.get("due")
    ikey = body.get("ikey")
    exp = body.get("exp")
    for fname, fvalue in (("due", due), ("exp", exp)):
        if fvalue is not None and (not isinstance(fvalue, (int, float)) or isinstance(fvalue, bool)):
            raise DecodeError(f"envelope field {fname!r} has type {type(fvalue).__name__}")
    if ikey is not None and not isinstance(ikey, str):
        raise DecodeError(f"envelope field 'ikey' has type {type(ikey).__name__}")
    meta = body.get("meta", {})
    if not isinstance(meta, dict) or not all(isinstance(k, str) for k in meta):
        raise DecodeError(f"envelope field 'meta' has type {type(meta).__name__}")
    return Message(
        task=body["task"], args=body["args"], kwargs=body["kwargs"], id=body["id"],
        attempt=body["attempt"], idempotency_key=ikey, created=float(body["created"]),
        due=None if due is None else float(due), expires=None if exp is None else float(exp), meta=meta,
    )


def headers_of(message: Message, extra: Mapping[str, str | bytes] | None = None) -> list[tuple[str, bytes]]:
    """Kafka headers for a message: task name and id first, then the caller's (reserved names refused)."""
    headers_mod.check_caller_headers(extra)
    headers = [
        (HEADER_TASK, message.task.encode()),
        (HEADER_ID, message.id.encode()),
        (HEADER_VERSION, str(FORMAT_VERSION).encode()),
    ]
    if extra:
        for key, value in extra.items():
            if isinstance(value, str):
                value = value.encode()
            elif not isinstance(value, (bytes, bytearray, memoryview)):
                raise EncodeError(f"header {key!r} must be str or bytes, got {type(value).__name__}")
            if not isinstance(key, str):
                raise EncodeError(f"header name {key!r} must be str")
            headers.append((key, bytes(value)))
    return headers


#: The last value of a header, decoded, or None.
header = headers_mod.value_of
