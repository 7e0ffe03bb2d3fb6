"""Reserved headers: refused from callers at enqueue, honoured by the worker only on ktasks' own topics."""

from __future__ import annotations

from typing import Any

import pytest

from ktasks import App, EncodeError
from ktasks.headers import (
    H_FORCE,
    H_LAST_ERROR,
    H_ORIGIN_TOPIC,
    H_REPLAY,
    RULES,
    Copy,
    Fate,
    Marks,
    Rule,
    Trust,
    check_caller_headers,
    delay_headers,
    is_reserved,
    replay_headers,
    retry_headers,
    rule_of,
    strip_dead_letter_headers,
    trusted_marks,
)
from ktasks.message import Message, encode, header, headers_of
from tests.fixtures.app import read_topic
from tests.helpers import wait_until

CONTROL = [(H_FORCE, b"1"), (H_REPLAY, b"1"), (H_ORIGIN_TOPIC, b"elsewhere")]


def test_reserved_names_are_refused_at_enqueue_before_anything_is_sent() -> None:
    assert is_reserved("ktasks-force") and is_reserved("kafka_dlt-original-topic")
    assert is_reserved("KTASKS-Force")  # header names compare without regard to case (docs/protocol.md)
    assert not is_reserved("trace-id") and not is_reserved("x-ktasks-force")
    check_caller_headers({"trace-id": "abc"})
    app = App("reserved", bootstrap_servers="127.0.0.1:1")  # never reached: refused before the producer

    @app.task(name="reserved.pay")
    def pay(order: str) -> None:
        """Never runs here."""

    for name in ("ktasks-force", "ktasks-origin-topic", "kafka_dlt-exception-message"):
        with pytest.raises(EncodeError, match=f"header '{name}' is reserved for ktasks"):
            pay.apply_async(args=("o-1",), headers={name: "1", "trace-id": "abc"})
    with pytest.raises(EncodeError, match="reserved"):
        headers_of(Message("t"), {"ktasks-replay": b"1"})


def test_control_headers_count_only_on_ktasks_topics() -> None:
    assert trusted_marks(CONTROL, on_ktasks_topic=False) == Marks()
    assert trusted_marks(CONTROL, on_ktasks_topic=True) == Marks("elsewhere", replay=True, force=True)
    assert trusted_marks([], on_ktasks_topic=True) == Marks()


def test_a_retry_copy_carries_the_callers_headers_and_writes_its_own_control_ones() -> None:
    original = [("trace-id", b"abc"), *CONTROL, (H_LAST_ERROR, b"old")]
    copy = retry_headers(original, "orders", "ValueError: " + "x" * 2000)
    assert [k for k, _ in copy] == ["trace-id", H_ORIGIN_TOPIC, H_LAST_ERROR]
    assert header(copy, H_ORIGIN_TOPIC) == "orders" and len(header(copy, H_LAST_ERROR) or "") == 1000


def test_forged_control_headers_on_a_task_topic_are_ignored_by_the_worker(project: Any, kafka_admin: Any) -> None:
    p = project("""
        @app.task
        def pay(order):
            effect("paid", order=order)

        @app.task(max_retries=0)
        def refund(order):
            raise ValueError("refunds are closed")
    """, partitions=1)
    w = p.worker("-c", "1")
    w.wait_assigned()
    pay, refund = p.app_module.pay, p.app_module.refund
    pay.apply_async(args=("o-1",), idempotency_key="pay-o-1")
    p.app.flush()
    wait_until(lambda: p.committed(kafka_admin).get(0) == 1, 60, message="the payment committed")
    # A producer that does not go through delay() (so nothing refused the headers) sends the same
    # payment again, "forced", and a refund whose retries and dead letter it tries to route elsewhere.
    elsewhere = p.topic + "-elsewhere"
    forged = [(H_FORCE, b"1"), (H_REPLAY, b"1"), (H_ORIGIN_TOPIC, elsewhere.encode())]
    again = Message(pay.name, args=["o-1"], idempotency_key="pay-o-1")
    p.app.send_raw(p.topic, encode(again), headers=headers_of(again) + forged)
    bad = Message(refund.name, args=["o-2"])
    p.app.send_raw(p.topic, encode(bad), headers=headers_of(bad) + forged)
    p.app.flush()
    wait_until(lambda: p.committed(kafka_admin).get(0) == 3, 60, message="all 3 records committed")
    assert [e["order"] for e in p.effects("paid")] == ["o-1"], "ktasks-force on a task topic bypassed the ledger"
    assert "already succeeded" in w.log()
    [letter] = read_topic(p.bootstrap, p.topic + ".DLT", 1)
    assert header(letter.headers, H_ORIGIN_TOPIC) == p.topic
    topics = set(kafka_admin.list_topics())
    assert elsewhere not in topics and elsewhere + ".DLT" not in topics
    assert w.stop() == 0


def _copies(headers: list[tuple[str, bytes]]) -> dict[Copy, list[tuple[str, bytes]]]:
    """What each copy ktasks makes writes, built by the functions the worker and the dlq tools call."""
    return {
        Copy.RETRY: retry_headers(headers, "orders", "ValueError: no"),
        Copy.DELAY: delay_headers(headers, "orders", from_tier=True),
        Copy.DEAD_LETTER: strip_dead_letter_headers(headers),
        Copy.REPLAY: replay_headers(headers, force=True, origin_topic="orders"),
    }


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.name)
def test_every_copy_follows_the_rules_table(rule: Rule) -> None:
    name = rule.name + "original-topic" if rule.prefix else rule.name
    stale = (name, b"stale-value")
    for copy, headers in _copies([("trace-id", b"abc"), stale]).items():
        fate = rule.fates[copy]
        assert ("trace-id", b"abc") in headers, f"{copy.value} lost a caller's header"
        assert (stale in headers) == (fate is Fate.CARRIED), f"{copy.value} should have {fate.value} {name}"
        if fate is Fate.DROPPED:
            assert name not in dict(headers), f"{copy.value} should have dropped {name}"


def test_rewritten_headers_get_a_fresh_value_and_untrusted_control_headers_are_not_delayed() -> None:
    for copy, headers in _copies([]).items():
        for rule in RULES:
            if not rule.prefix and rule.fates[copy] is Fate.REWRITTEN and copy is not Copy.DEAD_LETTER:
                assert rule.name in dict(headers), f"{copy.value} should write {rule.name}"
    from_task_topic = delay_headers(CONTROL, "orders", from_tier=False)
    assert from_task_topic == [(H_ORIGIN_TOPIC, b"orders")]
    assert [r.name for r in RULES if r.trust is Trust.RETRY_TOPICS_ONLY] == [H_ORIGIN_TOPIC, H_REPLAY, H_FORCE]
    assert rule_of("trace-id") is None and rule_of("ktasks-dlt-reason") is not None
