"""The one rule for naming exceptions on the wire and in the ledger (broker-free)."""

from __future__ import annotations

import struct

import pytest

from ktasks.deadletter import H_EXC_FQCN, StoredDeadLetter
from ktasks.errors import DecodeError, exception_name, normalize_exception_name


class _Local(Exception):
    class Inner(Exception):
        pass


def test_builtins_are_named_without_their_module() -> None:
    assert exception_name(ValueError("x")) == "ValueError"
    assert exception_name(KeyError) == "KeyError"


def test_other_exceptions_carry_module_and_qualname() -> None:
    assert exception_name(DecodeError("bad")) == "ktasks.errors.DecodeError"
    assert exception_name(_Local.Inner()) == f"{__name__}._Local.Inner"


def test_main_module_keeps_its_prefix() -> None:
    cls = type("Boom", (Exception,), {"__module__": "__main__"})
    assert exception_name(cls) == "__main__.Boom"


@pytest.mark.parametrize("raw, read", [("builtins.ValueError", "ValueError"), ("ValueError", "ValueError"),
                                       ("ktasks.errors.DecodeError", "ktasks.errors.DecodeError")])
def test_names_older_workers_wrote_read_as_todays(raw: str, read: str) -> None:
    assert normalize_exception_name(raw) == read
    stored = StoredDeadLetter("orders.DLT", 0, 7, 0, b"", None,
                              [(H_EXC_FQCN, raw.encode()), ("kafka_dlt-original-partition", struct.pack(">i", 0))])
    assert stored.exc_type == read
