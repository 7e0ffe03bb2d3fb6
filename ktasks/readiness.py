"""Waiting for the Kafka cluster at start-up, with one clear line at a bounded rate.

A worker started while its brokers are down (a host reboot, a deploy that
starts workers before Kafka) should wait for them, as a service does, rather
than exit after the client's bootstrap timeout with a chained traceback.
:func:`wait_for_cluster` probes the cluster until it answers, logging one
WARNING when it starts waiting and then at most one every ``log_interval_s``.
kafka-python's own connection errors during the probes are kept out of the
log: the waiting line says the same once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator

from .errors import KtasksError
from .kafka import KafkaAdminClient, client_config
from .kafka.errors import KafkaError
from .settings import Settings

logger = logging.getLogger(__name__)

__all__ = ["wait_for_cluster", "until_reachable", "transient_cause", "log_failure", "probe_cluster", "LOG_INTERVAL_S",
           "PROBE_TIMEOUT_S"]

#: Longest time between two "waiting for Kafka" lines.
LOG_INTERVAL_S = 30.0
#: How long one probe waits for the cluster to answer.
PROBE_TIMEOUT_S = 5.0
#: Pause between probes: doubles from the first to the last, so a broker that comes back is seen soon.
_PAUSE_S = (0.5, 5.0)


def probe_cluster(settings: Settings, client_id: str, timeout_s: float = PROBE_TIMEOUT_S) -> None:
    """Connect to the cluster and fetch its metadata once; raises the client's error if it does not answer."""
    cfg = client_config(settings, "admin", dict(client_id=f"{client_id}-probe",
                                                bootstrap_timeout_ms=int(timeout_s * 1000),
                                                request_timeout_ms=max(int(timeout_s * 1000), 1000)),
                        user_wins=False)
    with _kafka_python_quiet():
        admin = KafkaAdminClient(**cfg)
        try:
            admin.describe_cluster()
        finally:
            admin.close()


def wait_for_cluster(settings: Settings, client_id: str, stop: Callable[[], bool] = lambda: False, *,
                     log_interval_s: float = LOG_INTERVAL_S, probe_timeout_s: float = PROBE_TIMEOUT_S,
                     probe: Callable[[], None] | None = None) -> bool:
    """Return once the cluster answers (True), or when ``stop()`` turns true first (False).

    Logs nothing when the cluster answers at once; otherwise one WARNING
    naming the servers and the error, then at most one every
    ``log_interval_s``, and one INFO line when the cluster answers.
    ``probe`` replaces :func:`probe_cluster` (tests).
    """
    check = probe or (lambda: probe_cluster(settings, client_id, probe_timeout_s))
    started = time.monotonic()
    next_line = started
    pause = _PAUSE_S[0]
    waited = False
    while not stop():
        try:
            check()
        except (KafkaError, OSError) as exc:
            now = time.monotonic()
            if now >= next_line:
                reason = str(exc)
                if not reason.startswith(type(exc).__name__):
                    reason = f"{type(exc).__name__}: {reason}"
                logger.warning("waiting for Kafka at %s: unreachable for %.0f s (%s); the worker starts "
                               "when it answers", settings.bootstrap_servers, now - started, reason)
                next_line = now + log_interval_s
            waited = True
            deadline = time.monotonic() + pause
            while not stop() and time.monotonic() < deadline:
                time.sleep(0.1)
            pause = min(pause * 2, _PAUSE_S[1])
            continue
        if waited:
            logger.info("Kafka at %s answers after %.0f s of waiting", settings.bootstrap_servers,
                        time.monotonic() - started)
        return True
    return False


def transient_cause(exc: BaseException | None) -> BaseException | None:
    """The error in ``exc``'s chain of causes that clears on its own (a broker down, a leader moving), if any.

    kafka-python marks those ``retriable``, as ktasks does its own; a socket
    error is one too. ktasks' errors (a :class:`~ktasks.errors.TopicError` from
    creating topics) carry the client's error as their cause.
    """
    while exc is not None:
        if isinstance(exc, OSError) or (isinstance(exc, (KafkaError, KtasksError))
                                        and getattr(exc, "retriable", False)):
            return exc
        exc = exc.__cause__
    return None


def log_failure(log: logging.Logger, what: str, exc: BaseException, then: str) -> None:
    """Log that ``what`` failed with ``exc`` and will ``then`` (start over, reconnect).

    A broker down or a leader moving is expected and clears: one WARNING line
    naming the cause. A traceback every few seconds through an outage would
    say nothing more. Anything else is logged at ERROR with its traceback.
    """
    cause = transient_cause(exc)
    if cause is not None:
        log.warning("%s: Kafka unavailable (%s: %s); %s", what, type(cause).__name__, cause, then)
    else:
        log.error("%s failed; %s", what, then, exc_info=exc)


class _Final(Exception):
    """Carries an error :func:`until_reachable` must not retry through :func:`wait_for_cluster`."""


def until_reachable(settings: Settings, client_id: str, step: Callable[[], object],
                    stop: Callable[[], bool] = lambda: False, *, log_interval_s: float = LOG_INTERVAL_S) -> bool:
    """Run ``step``, a start-up call to Kafka, until it gets through a broker outage; False if ``stop()`` first.

    :func:`wait_for_cluster` only says the cluster answered a moment ago: a
    broker restarted right after (seen in the chaos runs: a worker started
    while the broker went down) fails the next call with a connection error.
    Errors that clear on their own (:func:`transient_cause`) are logged and
    retried like an unreachable cluster; any other error is raised at once.
    """
    def probe() -> None:
        try:
            step()
        except Exception as exc:
            cause = transient_cause(exc)
            if cause is None:
                raise _Final() from exc
            if not isinstance(cause, (KafkaError, OSError)):   # a retriable ktasks error
                raise KafkaError(f"{type(cause).__name__}: {cause}") from exc
            if cause is exc:
                raise
            raise cause from exc

    try:
        return wait_for_cluster(settings, client_id, stop, log_interval_s=log_interval_s, probe=probe)
    except _Final as final:
        raise final.__cause__ from None  # type: ignore[misc]


@contextlib.contextmanager
def _kafka_python_quiet() -> Iterator[None]:
    """kafka-python logs every refused connection at ERROR; while probing, the waiting line says it once."""
    kafka_logger = logging.getLogger("kafka")
    level = kafka_logger.level
    kafka_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        kafka_logger.setLevel(level)
