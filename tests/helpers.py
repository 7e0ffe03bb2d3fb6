"""Helpers for tests: import them as ``from tests.helpers import wait_until``."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout_s: float, interval_s: float = 0.05,
               message: str = "condition not met") -> T:
    """Call ``predicate`` until it returns something truthy, and return that.

    Use this instead of a bare ``time.sleep`` whenever a test waits for a
    condition. Raises AssertionError with ``message`` (and the timeout) if the
    predicate is still falsy once ``timeout_s`` has passed (it is always
    called at least once after the deadline before giving up).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"{message} (waited {timeout_s:g} s)")
        time.sleep(interval_s)


class UniqueNames(Protocol):
    """Type of the ``unique`` fixture: ``unique("topic")`` gives a name no other test uses."""

    def __call__(self, prefix: str = "t") -> str: ...


def create_topic(admin: Any, name: str, partitions: int = 1, configs: dict[str, str] | None = None) -> None:
    """Create a topic with replication factor 1 and wait until every partition has a leader."""
    spec: dict[str, Any] = {"num_partitions": partitions, "replication_factor": 1}
    if configs:
        spec["configs"] = configs
    admin.create_topics({name: spec}, wait_for_metadata=True)


@contextlib.contextmanager
def read_only(path: Path) -> Iterator[None]:
    """Make the file ``path`` read-only for this user and its subprocesses while the block runs.

    root writes through permission bits, so as root the file is made immutable
    (``chattr +i``) instead; the test is skipped where that is not possible.
    """
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    done = subprocess.run(["chattr", "+i", str(path)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot make {path} read-only for root here: {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def corrupt_ledger(path: Path) -> None:
    """A ledger with entries, then garbage written over some of its pages (a disk went bad)."""
    from ktasks.ledger import Ledger

    with Ledger(path) as led:
        for i in range(3000):
            led.begin(f"key-{i:05d}", "t", 0, 3)
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size // 2)
        f.write(b"\xde\xad\xbe\xef" * 4096)


class TcpForwarder:
    """Forwards connections on ``127.0.0.1:listen_port`` to ``target`` (``host:port``), from :meth:`start` on.

    A broker "down" at that port until the test starts forwarding: clients
    bootstrap through it, then follow the broker's advertised address.
    """

    def __init__(self, listen_port: int, target: str) -> None:
        self.listen_port = listen_port
        host, _, port = target.rpartition(":")
        self.target = (host, int(port))
        self._server: socket.socket | None = None
        self._stopped = threading.Event()

    def start(self) -> None:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.listen_port))
        server.listen(16)
        server.settimeout(0.2)
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while not self._stopped.is_set():
            try:
                client, _ = server.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def stop(self) -> None:
        self._stopped.set()
        if self._server is not None:
            self._server.close()
