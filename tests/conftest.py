"""Fixtures, broker layer: one real Apache Kafka for the whole test session.

* ``kafka_bootstrap`` (session): ``"127.0.0.1:PORT"``. Uses
  ``KTASKS_BOOTSTRAP_SERVERS`` when it is set; otherwise starts a dev broker on
  a free port in a temporary state directory, through the same code as
  ``ktasks dev up``, and stops and wipes it when the session ends.
* ``kafka_admin`` (session): a kafka-python ``KafkaAdminClient`` on that broker.
* ``unique`` (function): ``unique(prefix="t") -> str``, topic and group names
  that no other test (nor another run against the same broker) uses.

Helpers to import: ``tests.helpers.wait_until``, ``tests.helpers.create_topic``.
App and worker fixtures build on these in their own conftest files or plugins.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

# kafka-python 3.0 loads its protocol schemas with importlib.resources' legacy API
# when it is imported (which the imports below do, through ktasks).
_KAFKA_PYTHON_NOISE = "(read_text|open_text) is deprecated"
warnings.filterwarnings("ignore", message=_KAFKA_PYTHON_NOISE, category=DeprecationWarning)

from ktasks.dev import DevBroker, free_port  # noqa: E402
from tests.helpers import UniqueNames  # noqa: E402

#: Stops the session's broker if pytest dies without running its finalizers
#: (SIGKILL, a crash): polls until its parent is gone, then runs ``down``.
_WATCHDOG = """
import os, sys, time
parent, port, state_dir = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
while os.getppid() == parent:
    time.sleep(0.5)
from ktasks.dev import DevBroker
DevBroker(port=port, state_dir=state_dir).down(wipe=True, timeout_s=10)
"""


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("filterwarnings", f"ignore:{_KAFKA_PYTHON_NOISE}:DeprecationWarning")


@pytest.fixture(scope="session")
def kafka_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``host:port`` of a running Kafka broker, for ``bootstrap_servers``."""
    external = os.environ.get("KTASKS_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    broker = DevBroker(port=free_port(), state_dir=tmp_path_factory.mktemp("kafka"))
    broker.up(timeout_s=120)
    watchdog = subprocess.Popen(
        [sys.executable, "-c", _WATCHDOG, str(os.getpid()), str(broker.port), str(broker.state_dir)],
        stdin=subprocess.DEVNULL, start_new_session=True,
    )
    try:
        yield broker.bootstrap
    finally:
        watchdog.kill()
        watchdog.wait()
        broker.down(wipe=True)


@pytest.fixture(scope="session")
def kafka_admin(kafka_bootstrap: str) -> Iterator[Any]:
    """A ``kafka.KafkaAdminClient`` connected to :func:`kafka_bootstrap`, closed at session end."""
    from kafka import KafkaAdminClient

    admin = KafkaAdminClient(bootstrap_servers=kafka_bootstrap, client_id="ktasks-tests")
    try:
        yield admin
    finally:
        admin.close()


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> UniqueNames:
    """Make names unique to this test: ``unique("orders")`` -> ``"orders-test_x-1a2b3c4d"``.

    Valid as Kafka topic and group names (letters, digits, ``-``); every call
    returns a new name.
    """
    test = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name).strip("-")[:80] or "test"

    def make(prefix: str = "t") -> str:
        return f"{prefix}-{test}-{uuid.uuid4().hex[:8]}"

    return make

pytest_plugins = ["tests.fixtures.app", "tests.fixtures.worker", "tests.fixtures.cluster",
                  "tests.fixtures.postgres", "tests.fixtures.appdb"]
