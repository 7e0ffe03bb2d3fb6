"""Writing a benchmark's section of docs/performance.md, leaving the other sections alone."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

__all__ = ["crc_in_use", "write_section"]


def crc_in_use() -> str:
    """Which CRC-32C kafka-python checks and writes record batches with in this environment."""
    from kafka.record import util as record_util

    if record_util.crc32c_c is not None:
        return f"C CRC-32C (crc32c {metadata.version('crc32c')})"
    return "pure-Python CRC-32C (no crc32c package)"


def write_section(path: Path, section: str, title: str, keep_marker: str | None = None) -> None:
    """Replace the section ``## title`` in ``path``, or append it; other sections stay.

    Reads the file right before writing: another benchmark owns another section.
    With ``keep_marker``, hand-written text below that marker in the old section is kept.
    """
    text = path.read_text() if path.exists() else "# Performance\n"
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    found = pattern.search(text)
    if found:
        old = found.group(0)
        kept = old.split(keep_marker, 1)[1].strip("\n") if keep_marker and keep_marker in old else ""
        new = section + ("\n" + kept + "\n" if kept else "") + "\n"
        text = (text[:found.start()] + new + text[found.end():]).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text)
