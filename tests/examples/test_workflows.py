"""The workflows example: a web endpoint starts a chord, another polls its result by id (real worker, real broker)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.examples import ROOT, example_env
from tests.helpers import wait_until

EXAMPLE = ROOT / "examples" / "workflows"


def test_a_quote_chord_started_by_one_request_is_polled_by_id(kafka_bootstrap: str, unique: Any,
                                                                tmp_path: Path, monkeypatch: Any) -> None:
    env = example_env(kafka_bootstrap, unique, "workflows", tmp_path / "ledger.sqlite3")
    env["WORKFLOWS_APP"] = unique("workflows")
    env["KTASKS_SESSION_TIMEOUT_MS"] = "6000"
    env["KTASKS_HEARTBEAT_INTERVAL_MS"] = "500"
    for key, value in env.items():
        if key.startswith(("KTASKS_", "WORKFLOWS_")):
            monkeypatch.setenv(key, value)
    sys.path.insert(0, str(EXAMPLE))
    log = open(tmp_path / "worker.log", "wb")  # noqa: SIM115 - closed below
    worker = subprocess.Popen([sys.executable, "-m", "ktasks", "worker", "-A", "tasks:app", "-c", "2"], cwd=EXAMPLE,
                              env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        import app as web_module  # the example's Flask app, configured by the environment above

        client = web_module.web.test_client()
        started = client.post("/quotes", json={"items": [["apple", 3], ["pear", 2], ["melon", 1]]})
        assert started.status_code == 202
        quote = started.get_json()["id"]
        bad = client.post("/quotes", json={"items": [["apple", 1], ["durian", 1]]}).get_json()["id"]
        assert client.post("/quotes", json={}).status_code == 400

        def poll(quote_id: str) -> Any:
            reply = client.get(f"/quotes/{quote_id}")
            return reply if reply.status_code != 202 else None

        try:
            done = wait_until(lambda: poll(quote), 240, interval_s=0.5, message="the quote never completed")
        except AssertionError:
            print((tmp_path / "worker.log").read_text(errors="replace")[-6000:])
            raise
        assert done.status_code == 200, done.get_json()
        assert done.get_json() == {"id": quote, "status": "SUCCESS", "lines": 3, "total": "6.30"}
        failed = wait_until(lambda: poll(bad), 60, interval_s=0.5, message="the bad quote never failed")
        assert failed.status_code == 422
        assert "durian" in failed.get_json()["error"] and failed.get_json()["failed"] == "workflows.price"
    finally:
        if "tasks" in sys.modules:
            sys.modules["tasks"].app.close()
        worker.terminate()
        worker.wait(timeout=90)
        log.close()
        sys.path.remove(str(EXAMPLE))
        for name in ("app", "tasks"):
            sys.modules.pop(name, None)
