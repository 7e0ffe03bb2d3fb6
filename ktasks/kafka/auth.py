"""Fail at once, saying so, when Kafka rejects the client's credentials.

The cause (kafka-python 3.0.12, ``KafkaConnectionManager._do_bootstrap`` in
``kafka/net/manager.py``): a ``SaslAuthenticationFailedError`` while
bootstrapping is logged as a warning and retried with backoff until
``bootstrap_timeout_ms``, after which the client raises ``KafkaTimeoutError:
Unable to bootstrap``. A wrong password thus looked, after 10 s, like an
unreachable cluster. Worse, the broker sends its authentication error and
closes the connection at once, and when both arrive in one read,
``KafkaTCPTransport._read_from_sock`` (``kafka/net/transport.py``) aborts with
"socket disconnected" and drops the bytes received with the close: the error
response itself is lost.

The workarounds, installed once when this module is imported (by
:mod:`ktasks.kafka` itself, so every ktasks client has them):

* a read that returns data and then finds the connection closed hands the
  data over first and reports the close on the next read;
* a read still queued when its connection was closed (a client closing, as a
  worker does at every stop) reports the close; kafka-python called
  ``recv`` on the ``None`` socket and logged an ERROR with a traceback;
* while a connection manager bootstraps, closing one of its connections
  because authentication failed re-raises that error, which ends the
  bootstrap at once with it. Outside bootstrapping nothing changes
  (kafka-python keeps the failure and reports it on later requests).
"""

from __future__ import annotations

import functools
import threading
from typing import Any

from kafka.errors import KafkaConnectionError, SaslAuthenticationFailedError
from kafka.net.connection import KafkaConnection
from kafka.net.manager import KafkaConnectionManager
from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport

from ..errors import AuthenticationFailed
from ..settings import Settings

__all__ = ["authentication_failed", "install"]

_lock = threading.Lock()
_bootstrapping: set[int] = set()  # id() of the event loops (``net``) of managers now bootstrapping
_installed = False


def install() -> None:
    """Patch kafka-python as described in the module doc (idempotent)."""
    global _installed
    with _lock:
        if _installed:
            return
        _installed = True
    original_bootstrap = KafkaConnectionManager._do_bootstrap
    original_close = KafkaConnection.close

    @functools.wraps(original_bootstrap)
    async def _do_bootstrap(self: Any, deadline: Any) -> Any:
        key = id(self._net)
        _bootstrapping.add(key)
        try:
            return await original_bootstrap(self, deadline)
        finally:
            _bootstrapping.discard(key)

    @functools.wraps(original_close)
    def close(self: Any, error: Any = None) -> Any:
        result = original_close(self, error)
        if isinstance(error, SaslAuthenticationFailedError) and id(self.net) in _bootstrapping:
            raise error
        return result

    for transport in (KafkaTCPTransport, KafkaSSLTransport):
        transport._sock_recv = _data_before_close(transport._sock_recv)
    KafkaConnectionManager._do_bootstrap = _do_bootstrap
    KafkaConnection.close = close


def _data_before_close(original: Any) -> Any:
    @functools.wraps(original)
    def _sock_recv(self: Any) -> tuple[bytes, Any]:
        pending = getattr(self, "_ktasks_pending_error", None)
        if pending is not None:
            self._ktasks_pending_error = None
            return b"", pending
        if getattr(self, "_sock", None) is None:
            return b"", KafkaConnectionError("socket closed")
        data, error = original(self)
        if data and error is not None:
            self._ktasks_pending_error = error  # the socket stays readable at EOF: the next read reports it
            return data, None
        return data, error

    return _sock_recv


def authentication_failed(exc: SaslAuthenticationFailedError, settings: Settings) -> AuthenticationFailed:
    """A ktasks error for rejected credentials, naming the servers, mechanism and user (never the password)."""
    who = f"SASL {settings.sasl_mechanism or 'PLAIN'}, user {settings.sasl_plain_username!r}"
    return AuthenticationFailed(f"Kafka at {settings.bootstrap_servers}: authentication failed ({who}): {exc}")


install()
