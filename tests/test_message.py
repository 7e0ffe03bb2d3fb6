"""The wire format: every supported argument type survives the broker; bad input never gets out."""

from __future__ import annotations

import datetime as dt
import os
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pytest

from ktasks import DecodeError, EncodeError
from ktasks.message import (
    FORMAT_VERSION,
    HEADER_ID,
    HEADER_TASK,
    MAX_ARG_DEPTH,
    MAX_DEPTH,
    MAX_INT,
    MIN_INT,
    Message,
    decode,
    encode,
    header,
    headers_of,
    new_id,
    pack,
    unpack,
)

UTC = dt.timezone.utc
MINUS_0530 = dt.timezone(dt.timedelta(hours=-5, minutes=-30))

#: One value of every supported type, with edge cases.
VALUES: dict[str, Any] = {
    "none": None,
    "true": True,
    "false": False,
    "zero": 0,
    "int": 42,
    "negative": -7,
    "big": 2**64 - 1,
    "most_negative": -(2**63),
    "float": 3.141592653589793,
    "tiny_float": 5e-324,
    "infinity": float("inf"),
    "str": "hello",
    "unicode": "żółw 🐢 漢字 \u0000 nul",
    "empty_str": "",
    "bytes": b"\x00\xff binary \x80",
    "empty_bytes": b"",
    "list": [1, "a", [2, [3, None]], {"k": "v"}],
    "dict": {"a": {"b": [1, {"c": None}]}, "n": 1.5},
    "int_keys": {1: "one", -2: "minus two"},
    "tuple": (1, "two", (3, (4,))),
    "tuple_key": {(1, 2): "pair", (3, (4, 5)): "nested"},
    "aware_utc": dt.datetime(2026, 11, 29, 10, 30, 5, 123456, tzinfo=UTC),
    "aware_offset": dt.datetime(1999, 12, 31, 23, 59, 59, tzinfo=MINUS_0530),
    "naive": dt.datetime(2026, 1, 2, 3, 4, 5, 6),
    "date": dt.date(2024, 2, 29),
    "decimal": Decimal("12345678901234567890.000000001"),
    "decimal_exponent": Decimal("-0.10"),
    "decimal_nan": Decimal("NaN"),
    "uuid": uuid.UUID("12345678-1234-5678-1234-567812345678"),
    "mixed": [dt.date(2020, 1, 1), {"when": dt.datetime(2020, 1, 1, tzinfo=UTC), "id": uuid.UUID(int=1)}],
}


def _expected(value: Any) -> Any:
    """What a value comes back as: tuples become lists (dict keys stay tuples)."""
    if isinstance(value, (list, tuple)):
        return [_expected(v) for v in value]
    if isinstance(value, dict):
        return {k: _expected(v) for k, v in value.items()}
    return value


def _assert_same(got: Any, want: Any, where: str) -> None:
    want = _expected(want)
    assert type(got) is type(want), f"{where}: {type(got).__name__} != {type(want).__name__}"
    if isinstance(want, dict):
        assert list(got) == list(want), where
        for k in want:
            _assert_same(got[k], want[k], f"{where}[{k!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), where
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same(g, w, f"{where}[{i}]")
    elif isinstance(want, Decimal):
        assert str(got) == str(want), where  # exponent and NaN preserved
    elif isinstance(want, dt.datetime):
        assert (got.tzinfo is None) == (want.tzinfo is None), where
        assert got.utcoffset() == want.utcoffset(), where
        assert got.replace(tzinfo=None) == want.replace(tzinfo=None), where
    else:
        assert got == want, where


def test_every_supported_type_round_trips_through_the_broker(app, read_records):
    @app.task(name="types.echo")
    def echo(*args: Any, **kwargs: Any) -> None:
        """Never runs here."""

    handle = echo.apply_async(args=list(VALUES.values()), kwargs=VALUES, idempotency_key="ikey-1",
                              countdown_s=60)
    sent = handle.wait_sent()
    [record] = read_records(handle.topic, min_count=1)
    assert (record.partition, record.offset) == (sent.partition, sent.offset)
    message = decode(record.value)
    assert message.task == "types.echo" and message.id == handle.id
    assert message.idempotency_key == "ikey-1" and message.attempt == 0
    assert message.due is not None and message.due - message.created == pytest.approx(60, abs=0.01)
    assert len(message.args) == len(VALUES)
    for (name, want), got in zip(VALUES.items(), message.args, strict=True):
        _assert_same(got, want, f"args:{name}")
    for name, want in VALUES.items():
        _assert_same(message.kwargs[name], want, f"kwargs:{name}")
    headers = dict(record.headers)
    assert headers[HEADER_TASK] == b"types.echo" and headers[HEADER_ID] == handle.id.encode()


def _nested(depth: int) -> list[Any]:
    """A list nesting lists ``depth`` deep: ``[[[...]]]``."""
    value: list[Any] = []
    for _ in range(depth - 1):
        value = [value]
    return value


def test_delay_refuses_what_the_worker_could_not_decode_and_sends_nothing(app, read_records,
                                                                          topic_end_offsets):
    @app.task(name="odd.values")
    def odd(*args: Any, **kwargs: Any) -> None:
        """Never runs here."""

    handle = odd.apply_async(args=[_nested(MAX_ARG_DEPTH), MAX_INT], kwargs={"low": MIN_INT})
    handle.wait_sent()
    [record] = read_records(handle.topic, min_count=1)
    message = decode(record.value)  # what the worker does with it: the deepest value decodes
    assert message.args[1] == MAX_INT and message.kwargs == {"low": MIN_INT}
    with pytest.raises(EncodeError, match=f"positional argument 0 nests lists or maps {MAX_ARG_DEPTH + 1} deep; "
                                          f"at most {MAX_ARG_DEPTH} can be decoded"):
        odd.delay(_nested(MAX_ARG_DEPTH + 1))
    with pytest.raises(EncodeError, match=r"positional argument 1 cannot be encoded: args\[1\]\['n'\]\[0\]: "
                                          r"integer 18446744073709551616 is out of range"):
        odd.delay(1, {"n": [2 ** 64]})
    assert sum(topic_end_offsets(handle.topic).values()) == 1, "nothing else was sent"


def test_encode_limits_are_the_decode_limits() -> None:
    assert MAX_ARG_DEPTH == MAX_DEPTH - 2
    deepest = Message("t", args=[_nested(MAX_ARG_DEPTH)], kwargs={"k": _nested(MAX_ARG_DEPTH)})
    # (compared as msgpack: == on lists 1,022 deep passes Python's recursion limit)
    assert pack(decode(encode(deepest)).kwargs["k"]) == pack(_nested(MAX_ARG_DEPTH))
    for message, where in [
        (Message("t", args=[1, _nested(MAX_ARG_DEPTH + 1)]), "positional argument 1"),
        (Message("t", kwargs={"deep": {"x": _nested(MAX_ARG_DEPTH)}}), "keyword argument 'deep'"),
        (Message("t", args=[_nested(5000)]), "positional argument 0"),  # past the encoder's own limit too
    ]:
        with pytest.raises(EncodeError, match=f"task 't': {where} nests lists or maps"):
            encode(message)
    # msgpack itself encodes one level more than it decodes: the envelope at MAX_DEPTH + 1 fails to decode.
    too_deep = msgpack.packb({"v": 1, "args": [_nested(MAX_ARG_DEPTH + 1)]})
    with pytest.raises(DecodeError, match=f"value is not msgpack: StackError: .* deeper than {MAX_DEPTH} levels"):
        decode(too_deep)
    assert decode(encode(Message("t", args=[MIN_INT, MAX_INT]))).args == [MIN_INT, MAX_INT]
    for value, path in [(MAX_INT + 1, "args[0]"), (MIN_INT - 1, "args[0]"), ([0, (1, -(2 ** 100))], "args[0][1][1]")]:
        with pytest.raises(EncodeError) as err:
            encode(Message("t", args=[value]))
        assert f"positional argument 0 cannot be encoded: {path}: integer" in str(err.value)
        assert "is out of range" in str(err.value) and "not encodable" not in str(err.value)
    with pytest.raises(EncodeError, match=r"keyword argument 'amount' cannot be encoded: kwargs\['amount'\]: "):
        encode(Message("t", kwargs={"amount": 10 ** 30}))


@pytest.mark.parametrize("name", sorted(VALUES))
def test_pack_round_trip_keeps_type(name):
    _assert_same(unpack(pack(VALUES[name])), VALUES[name], name)


@pytest.mark.parametrize(
    ("args", "kwargs", "culprit"),
    [
        ([1, object()], {}, "positional argument 1"),
        ([[1, [2, {3: {4}}]]], {}, "positional argument 0"),
        ([], {"tags": {"a", "b"}}, "keyword argument 'tags'"),
        ([2**64], {}, "positional argument 0"),
        ([-(2**63) - 1], {}, "positional argument 0"),
        ([dt.time(12, 0)], {}, "positional argument 0"),
        (["\ud800 lone surrogate"], {}, "positional argument 0"),
        ([], {"when": dt.timedelta(seconds=1)}, "keyword argument 'when'"),
    ],
)
def test_unencodable_arguments_raise_type_error_naming_them(args, kwargs, culprit):
    with pytest.raises(TypeError) as info:
        encode(Message(task="t.x", args=args, kwargs=kwargs))
    assert isinstance(info.value, EncodeError)
    assert culprit in str(info.value) and "'t.x'" in str(info.value)


@pytest.mark.parametrize(
    ("message", "fragment"),
    [
        (Message(task="t", kwargs={1: "x"}), "keyword 1"),
        (Message(task="t", idempotency_key=7), "idempotency_key"),  # type: ignore[arg-type]
        (Message(task="t", id=uuid.uuid4()), "id must be str"),  # type: ignore[arg-type]
        (Message(task="t", args=(1, 2)), "args must be a list"),  # type: ignore[arg-type]
    ],
)
def test_envelopes_a_worker_would_refuse_are_refused_at_encode(message, fragment):
    with pytest.raises(EncodeError, match=fragment):
        encode(message)


def _raw(**changes: Any) -> bytes:
    body = Message(task="t", args=[1]).to_dict()
    body.update(changes)
    for key in [k for k, v in changes.items() if v is _DROP]:
        del body[key]
    return msgpack.packb(body, use_bin_type=True)


_DROP = object()


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (None, "tombstone"),
        (b"\xc1 not msgpack", "not msgpack"),
        (b"", "not msgpack"),
        (msgpack.packb([1, 2]), "not a ktasks envelope"),
        (_raw(v=99), "unsupported format version 99"),
        (_raw(v=_DROP), "unsupported format version None"),
        (_raw(task=_DROP), "missing field 'task'"),
        (_raw(args="1"), "'args' has type str"),
        (_raw(attempt=True), "'attempt' has type bool"),
        (_raw(kwargs={1: 2}), "non-string keys"),
        (_raw(due="soon"), "'due'"),
        (_raw(ikey=5), "'ikey'"),
        (msgpack.packb({"v": 1, "x": msgpack.ExtType(99, b"")}, use_bin_type=True), "extension type 99"),
    ],
)
def test_decode_rejects_what_is_not_a_valid_envelope(data, reason):
    with pytest.raises(DecodeError, match=reason):
        decode(data)


def test_decode_accepts_what_encode_writes():
    m = Message(task="t.y", args=[1], kwargs={"a": b"b"}, attempt=2, idempotency_key="k", due=5.0)
    got = decode(encode(m))
    assert got == m
    assert unpack(encode(m))["v"] == FORMAT_VERSION


def test_headers_name_the_task_and_id_and_carry_the_callers():
    m = Message(task="billing.charge")
    hdrs = headers_of(m, {"trace": "abc", "raw": b"\x01"})
    assert hdrs[:2] == [(HEADER_TASK, b"billing.charge"), (HEADER_ID, m.id.encode())]
    assert ("trace", b"abc") in hdrs and ("raw", b"\x01") in hdrs
    assert header(hdrs, HEADER_TASK) == "billing.charge"
    assert header(hdrs + [("trace", b"later")], "trace") == "later"
    assert header(None, "x") is None and header(hdrs, "absent") is None
    with pytest.raises(EncodeError, match="header 'n'"):
        headers_of(m, {"n": 5})  # type: ignore[dict-item]


def test_new_id_is_a_uuid4_hex_and_unique():
    ids = {new_id() for _ in range(5000)}
    assert len(ids) == 5000
    for i in list(ids)[:50]:
        assert len(i) == 32 and uuid.UUID(i).version == 4 and uuid.UUID(i).hex == i


def test_new_id_differs_between_parent_and_forked_child():
    new_id()  # fills this process's pool of random bytes
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.write(write_fd, new_id().encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    child_id = os.read(read_fd, 64).decode()
    os.close(read_fd)
    os.waitpid(pid, 0)
    parent_ids = {new_id() for _ in range(300)}
    assert len(child_id) == 32 and child_id not in parent_ids
