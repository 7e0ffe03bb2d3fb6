"""Testing helpers and a pytest plugin for projects that use ktasks.

Enable the plugin in your ``conftest.py``::

    pytest_plugins = ["ktasks.testing"]

Fixtures:

* ``ktasks_app``: your app, named as for the CLI (``KTASKS_APP``, else
  ``[tool.ktasks] app`` in pyproject.toml or ``ktasks.toml``). Override it in
  your conftest to return the app another way.
* ``eager_app``: ``ktasks_app`` in eager mode for one test, with a fresh eager
  ledger; the app's settings are restored afterwards. Tasks run inline with
  the worker's retry, dead-letter and ledger rules (see :mod:`ktasks.eager`).
* ``ktasks_broker`` (session): ``host:port`` of a real Kafka broker:
  ``KTASKS_BOOTSTRAP_SERVERS`` if set, else a local broker started for the
  session with ``ktasks dev``'s code (Java 17 needed), stopped at the end.
* ``ktasks_worker``: a factory starting real ``ktasks worker`` processes for
  ``ktasks_app`` against ``ktasks_broker``; each is stopped after the test.

Outside pytest, :func:`eager` is a context manager doing what ``eager_app``
does.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from .app import App

logger = logging.getLogger(__name__)

__all__ = ["eager", "app_spec_of", "WorkerProcess", "wait_for"]


@contextmanager
def eager(app: App, *, propagates: bool = False, ledger: bool | None = None) -> Iterator[App]:
    """Run ``app`` in eager mode inside the block, with a fresh eager ledger; restore it after.

    ``propagates=True`` makes ``delay()`` raise a task's final exception (Celery's
    ``task_eager_propagates``). ``ledger=False`` turns the ledger off (default: the
    app's ``ledger_enabled``).
    """
    saved = app.settings
    changes: dict[str, Any] = {"eager": True, "eager_propagates": propagates}
    if ledger is not None:
        changes["ledger_enabled"] = ledger
    app.settings = saved.replace(**changes)
    app.eager_ledger.reset()
    try:
        yield app
    finally:
        app.settings = saved
        app.eager_ledger.reset()


def app_spec_of(app: App) -> str:
    """``module:attribute`` under which ``app`` can be imported, for a worker process."""
    for name, module in list(sys.modules.items()):
        if name == "__main__" or module is None:
            continue
        for attr, value in list(vars(module).items()):
            if value is app:
                return f"{name}:{attr}"
    raise LookupError(f"{app!r} is not a top-level attribute of any imported module; a worker cannot "
                      "import it")


def wait_for(predicate: Callable[[], Any], timeout_s: float = 60.0, interval_s: float = 0.05,
             message: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy (returned); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{message} not reached within {timeout_s:g} s")
        time.sleep(interval_s)


class WorkerProcess:
    """A ``ktasks worker`` subprocess started by the ``ktasks_worker`` fixture; its output goes to a file."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path, cwd: str | None = None) -> None:
        self.log_path = log_path
        self._log = open(log_path, "wb")  # noqa: SIM115 - closed in wait()
        self.proc = subprocess.Popen([sys.executable, "-m", "ktasks", "worker", *args], env=env, cwd=cwd,
                                     stdout=self._log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout_s: float = 60.0) -> None:
        """Wait until the worker logged ``text``; fails early if the worker exits."""
        wait_for(lambda: text in self.log() or self.proc.poll() is not None, timeout_s,
                 message=f"worker log line {text!r}")
        if text not in self.log():
            raise AssertionError(f"worker exited ({self.proc.returncode}) before logging {text!r}:\n"
                                 + self.log()[-4000:])

    def wait(self, timeout_s: float = 120.0) -> int:
        try:
            return self.proc.wait(timeout=timeout_s)
        finally:
            if self.proc.poll() is not None:
                self._log.close()

    def stop(self, timeout_s: float = 120.0) -> int:
        """Warm shutdown (SIGTERM); returns the exit code (0 when everything finished was committed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.wait(timeout_s)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.wait(30)


# -- pytest fixtures ---------------------------------------------------------------------


@pytest.fixture
def ktasks_app() -> App:
    """The project's app, named by KTASKS_APP or the project's config (override in your conftest)."""
    from .cli._app import load_app, resolve_app_spec

    spec = resolve_app_spec(None, required=False)
    if spec is None:
        pytest.fail("ktasks_app: set KTASKS_APP or [tool.ktasks] app in pyproject.toml, or define a "
                    "ktasks_app fixture returning your App")
    return load_app(spec)


@pytest.fixture
def eager_app(ktasks_app: App) -> Iterator[App]:
    """``ktasks_app`` in eager mode, with a fresh eager ledger, for one test."""
    with eager(ktasks_app) as app:
        yield app


@pytest.fixture(scope="session")
def ktasks_broker() -> Iterator[str]:
    """``host:port`` of a real broker: KTASKS_BOOTSTRAP_SERVERS, else a session-local one."""
    external = os.environ.get("KTASKS_BOOTSTRAP_SERVERS")
    if external:
        yield external
        return
    from .dev import DevBroker, free_port

    with tempfile.TemporaryDirectory(prefix="ktasks-broker-") as state:
        broker = DevBroker(port=free_port(), state_dir=state)
        broker.up(timeout_s=120)
        try:
            yield broker.bootstrap
        finally:
            broker.down(wipe=True)


@pytest.fixture
def ktasks_worker(ktasks_app: App, ktasks_broker: str, tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    """Factory: ``ktasks_worker("-c", "2", "--burst") -> WorkerProcess`` for ``ktasks_app``.

    The worker gets ``KTASKS_BOOTSTRAP_SERVERS`` (settings the app's module passes
    to ``App(...)`` win over it) and a ledger in the test's temporary folder.
    Workers still running at the end of the test are stopped warmly, then killed.
    """
    started: list[WorkerProcess] = []
    spec = app_spec_of(ktasks_app)

    def start(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> WorkerProcess:
        full = dict(os.environ)
        full.setdefault("KTASKS_BOOTSTRAP_SERVERS", ktasks_broker)
        full["KTASKS_LEDGER_PATH"] = str(tmp_path / f"worker-{len(started)}.ledger.sqlite3")
        full["PYTHONPATH"] = os.pathsep.join([p for p in sys.path if p] + [full.get("PYTHONPATH", "")])
        full.update(env or {})
        w = WorkerProcess(["-A", spec, *args], full, tmp_path / f"worker-{len(started)}.log", cwd=cwd)
        started.append(w)
        return w

    yield start
    for w in started:
        try:
            w.stop(60)
        except subprocess.TimeoutExpired:
            logger.warning("ktasks_worker: worker %s did not stop; killing it", w.proc.pid)
            w.kill()
