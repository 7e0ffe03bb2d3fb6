"""Broker-free: a service thread starts over after a failure, and says so in a way that fits the failure."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import KafkaTimeoutError

import ktasks.schedule.service as service
from ktasks.schedule.service import ServiceThread


class _Flaky(ServiceThread):
    def __init__(self, failures: list[Exception]) -> None:
        super().__init__("ktasks-test-service")
        self.failures = failures
        self.served = 0
        self.resets = 0

    def serve(self) -> None:
        self.served += 1
        if self.failures:
            raise self.failures.pop(0)

    def reset(self) -> None:
        self.resets += 1


def test_a_broker_outage_is_one_warning_line_and_a_bug_keeps_its_traceback(
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(service, "RESTART_PAUSE_S", 0.01)
    caplog.set_level(logging.INFO, logger="ktasks.schedule.service")
    thread = _Flaky([KafkaTimeoutError("Timeout expired while initializing transactional state in 10000 ms."),
                     ValueError("a bug")])
    thread.start()
    thread.join(timeout=10)
    assert not thread.is_alive() and thread.served == 3 and thread.resets == 2
    outage, bug = [r for r in caplog.records if r.name == "ktasks.schedule.service"]
    assert outage.levelno == logging.WARNING and outage.exc_info is None
    assert "Kafka unavailable (KafkaTimeoutError" in outage.getMessage()
    assert bug.levelno == logging.ERROR and bug.exc_info is not None and "failed; starting over" in bug.getMessage()
