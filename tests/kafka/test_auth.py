"""The transport read workarounds in ktasks.kafka.auth, broker-free (SASL itself is tested against a real listener)."""

from __future__ import annotations

import logging

import pytest
from kafka.errors import KafkaConnectionError
from kafka.net.transport import KafkaTCPTransport

import ktasks.kafka  # noqa: F401  (installs the workarounds)


def test_a_read_queued_on_a_closed_connection_reports_the_close_without_an_error_line(
        caplog: pytest.LogCaptureFixture) -> None:
    # Seen at every worker stop: the connection closed while a read was still queued.
    transport = KafkaTCPTransport.__new__(KafkaTCPTransport)
    transport._sock = None
    with caplog.at_level(logging.DEBUG, logger="kafka"):
        data, error = transport._sock_recv()
    assert data == b"" and isinstance(error, KafkaConnectionError)
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
