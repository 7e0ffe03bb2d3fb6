"""A dev broker with a SASL_SSL listener: tasks enqueued and run over it, wrong credentials, ktasks status."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ktasks import App, AuthenticationFailed
from ktasks.cli import cli
from ktasks.dev import DevBroker, free_port
from tests.dev.test_broker import run_cli
from tests.fixtures.worker import FAST, Project, wait_effects
from tests.helpers import UniqueNames


@pytest.fixture(scope="module")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevBroker]:
    """A dev broker started as ``ktasks dev up --sasl-ssl-port PORT`` would."""
    state_dir = tmp_path_factory.mktemp("sasl-broker")
    port, sasl_port = free_port(), free_port()
    result = run_cli("dev", "up", "--port", str(port), "--sasl-ssl-port", str(sasl_port), "--data-dir",
                     str(state_dir), "--timeout", "180")
    broker = DevBroker(port=port, state_dir=state_dir)
    try:
        assert result.exit_code == 0, result.output
        assert f"KTASKS_BOOTSTRAP_SERVERS=127.0.0.1:{sasl_port}" in result.stdout
        assert "KTASKS_SECURITY_PROTOCOL=SASL_SSL" in result.stdout
        yield broker
    finally:
        broker.down(wipe=True)


def test_the_listener_uses_tls_from_a_throwaway_ca_and_a_scram_user(secure_broker: DevBroker) -> None:
    settings = secure_broker.client_settings()
    assert settings["security_protocol"] == "SASL_SSL" and settings["sasl_mechanism"] == "SCRAM-SHA-512"
    assert Path(settings["ssl_cafile"]).read_text().startswith("-----BEGIN CERTIFICATE-----")
    status = secure_broker.status()
    assert status is not None and status.sasl_ssl_port == secure_broker.sasl_ssl.port  # type: ignore[union-attr]
    properties = secure_broker.config_path.read_text()
    assert f"SASL_SSL://127.0.0.1:{status.sasl_ssl_port}" in properties
    assert "PRIVATE KEY" in properties and "ktasks-dev-secret" not in properties  # the user lives in metadata


def test_enqueue_and_run_a_task_over_sasl_ssl(secure_broker: DevBroker, tmp_path: Path, unique: UniqueNames
                                             ) -> None:
    settings: dict[str, Any] = dict(FAST)
    settings.update({k: v for k, v in secure_broker.client_settings().items() if k != "bootstrap_servers"})
    project = Project(tmp_path, unique("secure"), secure_broker.client_settings()["bootstrap_servers"],
                      unique("tasks"), unique("group"), """
        @app.task
        def record(n):
            effect("ran", n=n)
    """, settings)
    try:
        handles = [project.app_module.record.delay(n) for n in range(3)]
        for handle in handles:
            handle.wait_sent()
        worker = project.worker("-c", "1")
        ran = wait_effects(project, "ran", 3, timeout_s=120)
        assert sorted(e["n"] for e in ran) == [0, 1, 2]
        assert worker.stop() == 0
    finally:
        project.cleanup()


def test_a_wrong_password_fails_at_once_saying_authentication_failed(secure_broker: DevBroker,
                                                                    unique: UniqueNames) -> None:
    settings = secure_broker.client_settings()
    settings.update(sasl_plain_password="not-the-password", send_timeout_ms=30000)
    app = App(unique("wrong"), default_topic=unique("tasks"), **settings)

    @app.task
    def job() -> None: ...

    started = time.monotonic()
    try:
        with pytest.raises(AuthenticationFailed, match="authentication failed .*SCRAM-SHA-512, user 'ktasks'"):
            job.delay()
    finally:
        app.close()
    # "At once": well before the 30 s send timeout that an unreachable cluster would take.
    assert time.monotonic() - started < 15


def test_ktasks_status_works_over_sasl_ssl(secure_broker: DevBroker) -> None:
    env = {f"KTASKS_{k.upper()}": str(v) for k, v in secure_broker.client_settings().items()}
    result = CliRunner().invoke(cli, ["status", "--json"], env=env, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    info = json.loads(result.stdout)
    assert info["reachable"] is True
