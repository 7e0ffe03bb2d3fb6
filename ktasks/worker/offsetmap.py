"""Completed offsets above the commit point, carried in the offset commit's metadata.

A partition's committed offset is its first unfinished record, so one slow
task holds it back while the records after it finish. Without more, the next
owner of the partition (after a crash or a rebalance, on any host) would run
all of those again. So each commit also carries, in its ``metadata`` string,
which offsets above the committed one already finished (the offset map of
Confluent's Parallel Consumer); the next owner reads it with the committed
offset and skips them.

Format: ``"kt1" + base64(payload)``, the payload being a kind byte, the
committed offset (a check that the map belongs to that commit), then either

* ``R`` run-length: varints alternating the lengths of runs of unfinished and
  finished offsets, starting just above the committed offset; or
* ``B`` bitset: a varint bit count, then the bits (bit *i* set: offset
  ``committed + 1 + i`` finished), least significant bit first.

Whichever is shorter is written. The broker refuses metadata longer than
``offset.metadata.max.bytes`` (4096 by default), and a refused commit would
stall the partition (Parallel Consumer #647): when the map does not fit in
``max_chars``, the highest finished offsets are left out until it does. That
is always safe: an offset left out of the map only runs again (and the ledger
still gets a say).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable

logger = logging.getLogger(__name__)

__all__ = ["MAX_METADATA_CHARS", "encode", "decode"]

PREFIX = "kt1"
#: Below the broker's default ``offset.metadata.max.bytes`` (4096), with room to spare.
MAX_METADATA_CHARS = 4000
_RUNS, _BITS = b"R", b"B"


def encode(committed: int, finished: Iterable[int], max_chars: int = MAX_METADATA_CHARS) -> str:
    """The metadata string for a commit at ``committed``, listing ``finished`` offsets above it.

    Offsets at or below ``committed`` are ignored. Returns ``""`` when there
    is nothing to carry. The result is never longer than ``max_chars``; if
    the whole map does not fit, it lists only the lowest finished offsets.
    """
    above = sorted({o - committed - 1 for o in finished if o > committed})
    if not above:
        return ""
    text = _encode(committed, above)
    if len(text) <= max_chars:
        return text
    kept = _longest_fitting_prefix(committed, above, max_chars)
    logger.info("offset map above %d: %d of %d finished offsets fit in %d characters; the rest may run again",
                committed, kept, len(above), max_chars)
    return _encode(committed, above[:kept]) if kept else ""


def _longest_fitting_prefix(committed: int, rel: list[int], max_chars: int) -> int:
    """How many of the (sorted) finished offsets fit: both encodings' sizes, prefix by prefix, in one pass."""
    fixed = 1 + len(_put_varint(committed))
    closed = 0                     # run-length bytes of the runs before the current one
    gap = count = at = 0
    for i, r in enumerate(rel):
        if i and r == rel[i - 1] + 1:
            count += 1
        else:
            if i:
                closed += len(_put_varint(gap)) + len(_put_varint(count))
                at = rel[i - 1] + 1
            gap, count = r - at, 1
        runs = closed + len(_put_varint(gap)) + len(_put_varint(count))
        bits = len(_put_varint(r + 1)) + (r + 8) // 8
        if len(PREFIX) + 4 * -(-(fixed + min(runs, bits)) // 3) > max_chars:
            return i
    return len(rel)


def decode(metadata: str | None, committed: int) -> frozenset[int]:
    """The finished offsets above ``committed`` that ``metadata`` (from that commit) lists.

    Metadata written by something else, for another offset, or damaged gives
    an empty set: nothing is skipped, which is always safe.
    """
    if not metadata or not metadata.startswith(PREFIX):
        return frozenset()
    try:
        payload = base64.b64decode(metadata[len(PREFIX):], validate=True)
        kind, (base, pos) = payload[:1], _varint(payload, 1)
        if base != committed:
            logger.warning("offset map is for offset %d, the commit is at %d: ignoring it", base, committed)
            return frozenset()
        rel = _read_runs(payload, pos) if kind == _RUNS else _read_bits(payload, pos) if kind == _BITS else None
        if rel is None:
            raise ValueError(f"unknown kind {kind!r}")
    except (ValueError, IndexError, binascii.Error) as exc:
        logger.warning("damaged offset map in commit metadata at offset %d (%s): ignoring it", committed, exc)
        return frozenset()
    return frozenset(committed + 1 + r for r in rel)


def _encode(committed: int, rel: list[int]) -> str:
    head = _put_varint(committed)
    runs = _runs(rel)
    bits = _bits(rel)
    payload = _RUNS + head + runs if len(runs) <= len(bits) else _BITS + head + bits
    return PREFIX + base64.b64encode(payload).decode("ascii")


def _runs(rel: list[int]) -> bytes:
    out = bytearray()
    at = 0                      # next relative offset not yet described
    i = 0
    while i < len(rel):
        j = i
        while j + 1 < len(rel) and rel[j + 1] == rel[j] + 1:
            j += 1
        out += _put_varint(rel[i] - at)          # unfinished run (may be empty only at the start)
        out += _put_varint(j - i + 1)            # finished run
        at = rel[j] + 1
        i = j + 1
    return bytes(out)


def _bits(rel: list[int]) -> bytes:
    nbits = rel[-1] + 1
    field = bytearray((nbits + 7) // 8)
    for r in rel:
        field[r >> 3] |= 1 << (r & 7)
    return _put_varint(nbits) + bytes(field)


def _read_runs(payload: bytes, pos: int) -> list[int]:
    rel: list[int] = []
    at = 0
    while pos < len(payload):
        gap, pos = _varint(payload, pos)
        count, pos = _varint(payload, pos)
        if count == 0:
            raise ValueError("empty finished run")
        rel.extend(range(at + gap, at + gap + count))
        at += gap + count
    return rel


def _read_bits(payload: bytes, pos: int) -> list[int]:
    nbits, pos = _varint(payload, pos)
    field = payload[pos:]
    if len(field) != (nbits + 7) // 8:
        raise ValueError(f"bitset of {nbits} bits has {len(field)} bytes")
    return [i for i in range(nbits) if field[i >> 3] >> (i & 7) & 1]


def _put_varint(n: int) -> bytes:
    if n < 0:
        raise ValueError(f"negative varint {n}")
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if shift > 63:
            raise ValueError("varint too long")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos
