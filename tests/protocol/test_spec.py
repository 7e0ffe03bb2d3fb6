"""docs/protocol.md names everything the Python code reads and writes on the wire.

The names are taken from the code itself (its AST and constants), so a field
or header added to the code without the specification fails here.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from ktasks import deadletter, message
from ktasks.message import Message
from tests.protocol.vectors import ROOT, VECTORS

SPEC = (ROOT / "docs" / "protocol.md").read_text()
KTASKS = ROOT / "ktasks"


def _table_rows(heading: str) -> set[str]:
    """First-column names (in backticks) of the tables in the section under ``heading``."""
    section = SPEC.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    return {name for row in re.findall(r"^\| (.+?) \|", section, flags=re.M)
            for name in re.findall(r"`([^`]+)`", row)}


def _fields_the_decoder_reads() -> set[str]:
    """String keys ``decode`` looks up in the envelope: ``body[...]``, ``body.get(...)``, ``_REQUIRED``."""
    tree = ast.parse(Path(message.__file__).read_text())
    decode = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "decode")
    found = set(message._REQUIRED)
    for node in ast.walk(decode):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "body":
            if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, str):
                found.add(node.slice.value)
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "body"):
            found.update(a.value for a in node.args[:1] if isinstance(a, ast.Constant))
    return found


def test_the_spec_names_every_field_the_decoder_reads() -> None:
    read = _fields_the_decoder_reads()
    assert {"v", "id", "task", "args", "kwargs", "attempt", "created", "due", "ikey"} <= read, read
    assert read <= _table_rows("The envelope"), read - _table_rows("The envelope")


def test_the_spec_names_every_field_the_encoder_writes_in_its_order() -> None:
    written = list(Message(task="t", expires=1.0, meta={"store": True}).to_dict())  # every field, the optional ones set
    table = re.findall(r"^\| `(\w+)` \| ", SPEC.split("\n## The envelope\n", 1)[1].split("\n### ", 1)[0],
                       flags=re.M)
    assert table == written
    envelopes = [list(json.loads(p.read_text())["envelope"]) for p in (VECTORS / "valid").glob("*.json")]
    assert all(fields == written[:len(fields)] for fields in envelopes)
    assert written in envelopes, "a vector sets every field"


_HEADER_NAME = re.compile(r"(ktasks-|kafka_dlt-)[a-z0-9-]*[a-z0-9]")


def _is_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and bool(_HEADER_NAME.fullmatch(node.value))


def _headers_in_code() -> set[str]:
    """Header names in ktasks/: module-level constants with such a name (``H_FORCE = "ktasks-force"``),
    names in a ``*HEADERS*`` collection, and names written as ``(name, value)`` pairs (how headers
    are built). Client ids and thread names (``ktasks-inspect``) are none of these."""
    names = set()
    for path in KTASKS.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for stmt in tree.body:
            if isinstance(stmt, ast.Assign) and _is_name(stmt.value):
                names.add(stmt.value.value)  # type: ignore[attr-defined]
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and "HEADERS" in t.id
                                                    for t in node.targets):
                names.update(n.value for n in ast.walk(node.value) if _is_name(n))  # type: ignore[attr-defined]
            if isinstance(node, ast.Tuple) and len(node.elts) == 2 and _is_name(node.elts[0]):
                names.add(node.elts[0].value)  # type: ignore[attr-defined]
    return names


def test_the_spec_names_every_header_the_code_uses() -> None:
    used = _headers_in_code()
    assert {message.HEADER_TASK, deadletter.H_FORCE, deadletter.H_ORIGINAL_TOPIC, "ktasks-last-error"} <= used
    documented = set(re.findall(r"`((?:ktasks-|kafka_dlt-)[a-z0-9-]+)`", SPEC))
    assert used <= documented, sorted(used - documented)


def test_the_spec_names_every_dead_letter_reason_and_extension_type() -> None:
    for reason in deadletter.REASONS:
        assert f"`{reason}`" in SPEC, reason
    codes = {v for k, v in vars(message).items() if k.startswith("_EXT_")}
    rows = re.findall(r"^\| (\d+) \| ", SPEC.split("\n### Extension types\n", 1)[1], flags=re.M)
    assert {int(r) for r in rows} == codes


def test_the_spec_names_every_rejection_reason_with_its_text() -> None:
    reasons = json.loads((VECTORS / "reasons.json").read_text())["reasons"]
    section = SPEC.split("\n## Rejection\n", 1)[1].split("\n## ", 1)[0]
    rows = dict(re.findall(r"^\| `([a-z-]+)` \| .+? \| `([^`]+)` \|$", section, flags=re.M))
    assert set(rows) == set(reasons)
    for name, pattern in reasons.items():
        assert rows[name].replace("<name>", "{field}") == pattern.replace("\\", ""), name
