"""Loading the wire-format test vectors in protocol/vectors/ (described in its README.md)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ktasks.message import Message
from tests.protocol.typed import to_python

ROOT = Path(__file__).resolve().parents[2]
VECTORS = ROOT / "protocol" / "vectors"


@dataclass(frozen=True)
class Valid:
    name: str
    envelope: dict[str, Any]
    key: str | None
    caller_headers: list[tuple[str, str]]
    value: bytes
    headers: list[tuple[str, bytes]]

    def message(self) -> Message:
        """The Python message the envelope stands for."""
        e = to_python(self.envelope)
        return Message(task=e["task"], args=e["args"], kwargs=e["kwargs"], id=e["id"], attempt=e["attempt"],
                       idempotency_key=e["ikey"], created=e["created"], due=e["due"], expires=e.get("exp"),
                       meta=e.get("meta", {}))


@dataclass(frozen=True)
class Invalid:
    name: str
    value: bytes | None
    reason: str
    field: str | None

    def pattern(self) -> str:
        """The regular expression the decoder's error text must match."""
        template = reasons()[self.reason]
        return template.replace("{field}", re.escape(self.field or ""))


def valid() -> list[Valid]:
    found = []
    for path in sorted((VECTORS / "valid").glob("*.json")):
        raw = json.loads(path.read_text())
        found.append(Valid(path.stem, raw["envelope"], raw["key"], [tuple(h) for h in raw["caller_headers"]],
                           bytes.fromhex(raw["value"]), [(k, v.encode()) for k, v in raw["headers"]]))
    return found


def invalid() -> list[Invalid]:
    found = []
    for path in sorted((VECTORS / "invalid").glob("*.json")):
        raw = json.loads(path.read_text())
        value = None if raw["value"] is None else bytes.fromhex(raw["value"])
        found.append(Invalid(path.stem, value, raw["reason"], raw.get("field")))
    return found


def reasons() -> dict[str, str]:
    return dict(json.loads((VECTORS / "reasons.json").read_text())["reasons"])


def partition_cases() -> list[dict[str, Any]]:
    return list(json.loads((VECTORS / "partitions.json").read_text())["cases"])
