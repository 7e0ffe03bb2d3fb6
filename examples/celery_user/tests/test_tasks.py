"""The shop's unit tests: eager mode, which runs each task as a worker would (retries, ledger)."""

import json

import pytest
from proj.tasks import fetch_rate, send_receipt

from ktasks import UnsupportedOption


@pytest.fixture(autouse=True)
def outbox(tmp_path, monkeypatch):
    path = tmp_path / "outbox.jsonl"
    monkeypatch.setattr("proj.tasks.OUTBOX", str(path))
    return path


def sent(outbox, kind):
    if not outbox.exists():
        return []
    return [r for r in map(json.loads, outbox.read_text().splitlines()) if r["kind"] == kind]


def test_fetch_rate_is_retried_until_the_service_answers(eager_app, outbox):
    result = fetch_rate.delay("USD")
    assert result.get() == 1.08
    assert result.retries == 2                      # failed twice, as the service did
    assert [r["attempt"] for r in sent(outbox, "rate")] == [2]


def test_fetch_rate_gives_up_after_max_retries(eager_app, outbox, monkeypatch):
    monkeypatch.setattr("proj.tasks._calls", lambda currency: 0)   # the service never answers
    result = fetch_rate.delay("JPY")                # does not raise, like delay() in production
    assert result.dead_letter_reason == "retries-exhausted" and result.attempts == 4
    with pytest.raises(ConnectionError):
        result.get()


def test_a_receipt_is_sent_once_per_idempotency_key(eager_app, outbox):
    first = send_receipt.apply_async(args=(7, "a@example.com"), idempotency_key="receipt-7")
    again = send_receipt.apply_async(args=(7, "a@example.com"), idempotency_key="receipt-7")
    assert not first.skipped and again.skipped
    assert [r["order_id"] for r in sent(outbox, "email")] == [7]


def test_priorities_are_refused_with_the_reason(eager_app):
    with pytest.raises(UnsupportedOption, match="own topic"):
        send_receipt.apply_async(args=(1, "a@example.com"), priority=9)


def test_a_real_worker_consumes_the_queue_given_with_dash_q(ktasks_app, ktasks_worker, tmp_path, outbox):
    queue = f"shop.emails.{tmp_path.name}"
    send_receipt.apply_async(args=(5, "b@example.com"), queue=queue, idempotency_key=f"r5-{tmp_path.name}")
    ktasks_app.flush()
    worker = ktasks_worker("-c", "1", "-Q", queue, "--burst", "--no-progress",
                           env={"SHOP_OUTBOX": str(outbox), "KTASKS_GROUP_ID": queue})
    assert worker.wait() == 0, worker.log()[-3000:]
    assert [r["order_id"] for r in sent(outbox, "email")] == [5]
