"""The dashboard's pages over HTTP (Starlette's test client), against the real broker; no browser."""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from starlette.testclient import TestClient

from ktasks import App
from ktasks.dashboard import create_app
from ktasks.deadletter import DeadLetter, iter_dead_letters, publish
from ktasks.message import Message, encode
from tests.fixtures.app import read_topic
from tests.helpers import wait_until


def _report(app: App, pid: int, **extra: Any) -> dict[str, Any]:
    now = time.time()
    data = {"format": 1, "member": f"{socket.gethostname()}:{pid}:1", "app": app.name, "group": app.group_id,
            "host": socket.gethostname(), "pid": pid, "version": "0.1.0", "state": "running",
            "started_at": now - 10, "sent_at": now, "interval_s": 5.0, "concurrency": 2,
            "topics": [app.default_topic], "partitions": [], "counts": {"succeeded": 7}, "rates": {"succeeded": 3.5},
            "run_time_s": {"count": 7, "p50": 0.01, "p95": 0.02}, "queued_s": {"count": 7, "p50": 0.1, "p95": 0.3},
            "in_flight": 1, "ready": 0, "ledger_path": None,
            "children": [{"index": 0, "pid": pid + 1, "alive": True, "tasks_done": 7,
                          "task": {"name": "tasks.slow", "id": "abc123", "running_s": 2.5}}]}
    data.update(extra)
    return data


def _send_report(app: App, data: dict[str, Any]) -> None:
    app.ensure_topics([app.settings.reports_topic])
    app.send_raw(app.settings.reports_topic, json.dumps(data).encode(), key=data["member"].encode()).get(timeout=10)


def _dead_letter(app: App, task_id: str) -> None:
    msg = Message(task="tasks.charge", args=[42], id=task_id)
    app.ensure_topics([app.default_topic])
    publish(app, DeadLetter(value=encode(msg), key=None, headers=[], topic=app.default_topic, partition=0,
                            offset=5, timestamp_ms=int(time.time() * 1000), origin_topic=app.default_topic,
                            reason="not-retriable", exc_type="builtins.ValueError", exc_message="card declined",
                            attempts=1, group=app.group_id)).get(timeout=10)


def test_overview_shows_reported_workers_and_partitions(make_app, unique):
    app = make_app(reports_topic=unique("reports"))
    _send_report(app, _report(app, 4242))
    with TestClient(create_app(app, refresh_s=0.3)) as client:
        def shown() -> str | None:
            body = client.get("/live").text
            return body if "4242" in body else None

        body = wait_until(shown, 30, interval_s=0.3, message="the reported worker never showed")
        assert "running" in body and "tasks.slow" in body and "3.5/s" in body
        assert f"Group <code>{app.group_id}</code>" in body
        page = client.get("/").text
        assert 'data-refresh="/live"' in page and "<svg" in page and "read-only" in page


def test_dead_letters_list_detail_and_actions_off_by_default(make_app, unique):
    app = make_app(reports_topic=unique("reports"))
    _dead_letter(app, "dl-1")
    dlt = app.dead_letter_topic(app.default_topic)
    with TestClient(create_app(app, refresh_s=0.5)) as client:
        listing = client.get("/dlq").text
        assert "dl-1" in listing and "card declined" in listing and "Purge" not in listing
        href = re.search(r'href="(/dlq/[^"]+/\d+/\d+)"', listing).group(1)
        detail = client.get(href).text
        assert "tasks.charge" in detail and "[42]" in detail and "--allow-actions" in detail
        assert client.get(href + "/replay").status_code == 403
        assert client.post(href + "/replay", data={"token": "x"}).status_code == 403
        assert client.get(f"/dlq/{dlt}/purge").status_code == 403
        assert client.get("/dlq/not-a-dlt/0/0").status_code == 404


def test_replay_and_purge_ask_first_and_need_the_form_token(make_app, unique):
    app = make_app(reports_topic=unique("reports"))
    _dead_letter(app, "dl-2")
    dlt = app.dead_letter_topic(app.default_topic)
    with TestClient(create_app(app, allow_actions=True, refresh_s=0.5)) as client:
        href = re.search(r'href="(/dlq/[^"]+/\d+/\d+)"', client.get("/dlq").text).group(1)
        confirm = client.get(href + "/replay").text
        assert "Replay task" in confirm and app.default_topic in confirm
        token = re.search(r'name="token" value="([^"]+)"', confirm).group(1)
        assert client.post(href + "/replay", data={"token": "wrong"}).status_code == 403
        done = client.post(href + "/replay", data={"token": token})
        # A replay travels through the origin topic's first retry tier (see ktasks.deadletter.replay).
        via = app.retry_topic(app.default_topic, app.delay_tier_ms(0))
        assert done.status_code == 200 and f"replayed to {via}[" in done.text
        # The replayed record is on the task topic, marked as a replay.
        records = read_topic(app.settings.bootstrap_servers, via, 1, 20)
        assert any(dict(r.headers).get("ktasks-replay") == b"1" for r in records)
        purge = client.get(f"/dlq/{dlt}/purge").text
        assert "Delete <strong>1</strong>" in purge
        ends = re.search(r'name="ends" value="([^"]+)"', purge).group(1)
        _dead_letter(app, "dl-3")      # arrives after the confirmation page: kept
        out = client.post(f"/dlq/{dlt}/purge", data={"token": token, "ends": ends})
        assert out.status_code == 200 and "Purged 1 dead letter(s)" in out.text
        assert [x.task_id for x in iter_dead_letters(app, [dlt])] == ["dl-3"]


def test_task_lookup_reads_the_ledger_of_a_worker_reporting_from_this_host(make_app, unique, tmp_path):
    from ktasks.ledger import Ledger

    path = tmp_path / "w.ledger.sqlite3"
    with Ledger(path) as ledger:
        ledger.begin("t-1", "tasks.slow", 0, 3, host="h", pid=1)
        ledger.succeeded("t-1", {"ok": True}, 0.5, task="tasks.slow")
        ledger.flush()
    app = make_app(reports_topic=unique("reports"))
    _send_report(app, _report(app, 5151, ledger_path=str(path)))
    with TestClient(create_app(app, refresh_s=0.3)) as client:
        wait_until(lambda: "5151" in client.get("/live").text, 30, interval_s=0.3)
        found = client.get("/task", params={"id": "t-1"}).text
        assert "succeeded" in found and str(path) in found and "tasks.slow" in found
        missing = client.get("/task", params={"id": "nope"}).text
        assert "No ledger entry for <code>nope</code> in 1 ledger(s)" in missing
