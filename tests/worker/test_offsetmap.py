"""The offset map in commit metadata: encode/decode, size limit and fallback, without a broker."""

from __future__ import annotations

import base64
import random

import pytest

from ktasks.worker.offsetmap import MAX_METADATA_CHARS, PREFIX, decode, encode


def test_nothing_finished_above_the_commit_is_an_empty_string() -> None:
    assert encode(100, []) == ""
    assert encode(100, [50, 99, 100]) == ""          # at or below the committed offset
    assert decode("", 100) == frozenset()
    assert decode(None, 100) == frozenset()


@pytest.mark.parametrize("seed", range(30))
def test_round_trip(seed: int) -> None:
    rnd = random.Random(seed)
    committed = rnd.randint(0, 10**12)
    density = rnd.choice([0.01, 0.3, 0.7, 0.99])
    finished = {committed + 1 + i for i in range(rnd.randint(1, 3000)) if rnd.random() < density}
    text = encode(committed, finished | {committed - 5, committed})
    assert len(text) <= MAX_METADATA_CHARS
    assert decode(text, committed) == finished


def test_the_shorter_encoding_is_chosen() -> None:
    # One long run of finished offsets: run-length is a few bytes.
    runs = encode(10, range(11, 5011))
    assert base64.b64decode(runs[len(PREFIX):])[:1] == b"R" and len(runs) < 20
    # Every other offset finished: a bitset is smaller than two varints per offset.
    bits = encode(10, range(12, 2012, 2))
    assert base64.b64decode(bits[len(PREFIX):])[:1] == b"B"
    assert decode(bits, 10) == frozenset(range(12, 2012, 2))


def test_a_map_too_large_keeps_the_lowest_offsets_and_fits() -> None:
    rnd = random.Random(7)
    finished = sorted({1 + rnd.randrange(200_000) for _ in range(60_000)})
    text = encode(0, finished, max_chars=1000)
    assert 0 < len(text) <= 1000
    kept = sorted(decode(text, 0))
    assert kept == finished[:len(kept)]                 # a prefix: only the highest are left out
    assert len(kept) < len(finished)
    # Always under the broker's default limit, whatever the map.
    assert len(encode(0, finished)) <= MAX_METADATA_CHARS <= 4096


def test_metadata_for_another_offset_or_from_elsewhere_is_ignored() -> None:
    text = encode(100, [102, 103])
    assert decode(text, 100) == {102, 103}
    assert decode(text, 101) == frozenset()              # committed since by someone without a map
    assert decode("written by another consumer", 100) == frozenset()


@pytest.mark.parametrize("damaged", [PREFIX + "!!!", PREFIX + base64.b64encode(b"X\x01").decode(),
                                     PREFIX + base64.b64encode(b"R\x64\x01").decode(),
                                     PREFIX + base64.b64encode(b"B\x64\x10\x01").decode(),
                                     PREFIX + base64.b64encode(b"R\x64\x00\x00").decode()])
def test_damaged_metadata_skips_nothing(damaged: str) -> None:
    assert decode(damaged, 100) == frozenset()


@pytest.mark.parametrize("seed", range(20))
def test_the_fallback_keeps_as_many_as_fit(seed: int) -> None:
    rnd = random.Random(seed)
    n = rnd.randint(1, 3000)
    finished = sorted({1 + rnd.randrange(n * rnd.choice([1, 2, 10])) for _ in range(n)})
    limit = rnd.randint(10, 600)
    text = encode(0, finished, max_chars=limit)
    assert len(text) <= limit
    kept = len(decode(text, 0))
    assert sorted(decode(text, 0)) == finished[:kept]
    if kept < len(finished):
        assert len(encode(0, finished[:kept + 1], max_chars=10**9)) > limit, "one more would have fit"


def test_tracker_carries_the_map_and_commits_when_only_the_map_grows() -> None:
    from ktasks.worker.offsets import OffsetTracker

    t = OffsetTracker(10)
    for o in range(10, 15):
        t.add(o)
    t.done(12)
    assert t.committable == 10 and t.needs_commit()
    t.mark_committed(10, t.offset_map())
    assert not t.needs_commit()
    t.done(13)                                   # the offset stays, the map grows: commit again
    assert t.needs_commit() and decode(t.offset_map(), 10) == {12, 13}


def test_tracker_of_a_new_owner_knows_what_finished_earlier() -> None:
    from ktasks.worker.offsets import OffsetTracker

    t = OffsetTracker(10, finished_earlier={8, 12, 13, 20})
    assert t.finished_earlier(12) and not t.finished_earlier(11) and not t.finished_earlier(8)
    # Not taken yet, still carried: a commit before they come again must not forget them.
    assert decode(t.offset_map(), 10) == {12, 13, 20}
    for o in (10, 11, 12, 13):
        t.add(o)
    t.done(12)
    t.done(13)
    t.done(10)
    assert t.committable == 11 and decode(t.offset_map(), 11) == {12, 13, 20}
    t.done(11)
    assert t.committable == 14 and decode(t.offset_map(), 14) == {20}
