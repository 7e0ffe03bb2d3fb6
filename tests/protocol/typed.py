"""The vectors' JSON notation for msgpack values, and its conversion to and from Python values.

JSON alone cannot tell ``2`` from ``2.0`` in every language, has no bytes and no
integers beyond 2**53 in JavaScript, so the vectors tag what JSON cannot say
(see protocol/vectors/README.md): ``{"$float": 2.0}``, ``{"$int": "18446744073709551615"}``,
``{"$bytes": "00ff"}``, ``{"$datetime": "...+00:00"}``, ``{"$naive_datetime": "..."}``,
``{"$date": "2024-05-01"}``, ``{"$decimal": "19.99"}``, ``{"$uuid": "..."}``.
Integers within +-2**53 and strings, booleans, null, lists and string-keyed maps
are plain JSON.
"""

from __future__ import annotations

import datetime as _dt
import decimal
import uuid
from typing import Any

SAFE_INT = 2 ** 53


def to_python(value: Any) -> Any:
    """The Python value a tagged JSON value stands for."""
    if isinstance(value, list):
        return [to_python(v) for v in value]
    if isinstance(value, dict):
        if len(value) == 1:
            (tag, raw), = value.items()
            if tag.startswith("$"):
                return _untag(tag, raw)
        return {k: to_python(v) for k, v in value.items()}
    if isinstance(value, float):
        raise ValueError(f"untagged float {value!r}: write {{\"$float\": {value!r}}}")
    return value


def _untag(tag: str, raw: Any) -> Any:
    if tag == "$float":
        return float(raw)
    if tag == "$int":
        return int(raw)
    if tag == "$bytes":
        return bytes.fromhex(raw)
    if tag == "$datetime":
        moment = _dt.datetime.fromisoformat(raw)
        if moment.tzinfo is None:
            raise ValueError(f"$datetime {raw!r} has no UTC offset (use $naive_datetime)")
        return moment
    if tag == "$naive_datetime":
        moment = _dt.datetime.fromisoformat(raw)
        if moment.tzinfo is not None:
            raise ValueError(f"$naive_datetime {raw!r} has a UTC offset")
        return moment
    if tag == "$date":
        return _dt.date.fromisoformat(raw)
    if tag == "$decimal":
        return decimal.Decimal(raw)
    if tag == "$uuid":
        return uuid.UUID(raw)
    raise ValueError(f"unknown tag {tag!r}")


def to_json(value: Any) -> Any:
    """The tagged JSON of a decoded Python value (inverse of :func:`to_python`)."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value if -SAFE_INT <= value <= SAFE_INT else {"$int": str(value)}
    if isinstance(value, float):
        return {"$float": value}
    if isinstance(value, bytes):
        return {"$bytes": value.hex()}
    if isinstance(value, _dt.datetime):
        return {"$datetime" if value.tzinfo is not None else "$naive_datetime": value.isoformat()}
    if isinstance(value, _dt.date):
        return {"$date": value.isoformat()}
    if isinstance(value, decimal.Decimal):
        return {"$decimal": str(value)}
    if isinstance(value, uuid.UUID):
        return {"$uuid": str(value)}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if isinstance(value, dict):
        if not all(isinstance(k, str) for k in value):
            raise ValueError(f"map with non-string keys {list(value)!r} has no tagged JSON form")
        return {k: to_json(v) for k, v in value.items()}
    raise ValueError(f"no tagged JSON form for {type(value).__name__}")
