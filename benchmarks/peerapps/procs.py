"""Process tools shared by the benchmarks: process trees, their memory, redis-server, stopping.

Everything reads ``/proc`` (Linux only), as the harnesses run on the
project's Linux machines.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ktasks.dev import free_port


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (from every thread's ``children`` list); [] if it is gone."""
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                found.extend(int(c) for c in f.read().split())
        except OSError:
            continue
    return found


def tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (those alive now)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(children(p))
    return out


def cmdline(pid: int) -> str:
    """The command line of ``pid``, arguments joined by spaces ('' if it is gone)."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def memory(pids: Iterable[int]) -> tuple[int, int]:
    """Summed RSS and PSS, in bytes, of the trees rooted at ``pids``.

    RSS counts pages shared between forked processes once per process; PSS
    splits them among their sharers, so it is the fairer sum for a pool.
    """
    rss = pss = 0
    for root in pids:
        for p in tree(root):
            try:
                with open(f"/proc/{p}/smaps_rollup") as f:
                    for line in f:
                        if line.startswith("Rss:"):
                            rss += int(line.split()[1]) * 1024
                        elif line.startswith("Pss:"):
                            pss += int(line.split()[1]) * 1024
            except OSError:
                continue
    return rss, pss


class MemorySampler(threading.Thread):
    """Samples :func:`memory` of some process trees every ``interval_s``; keeps the peaks."""

    def __init__(self, interval_s: float = 0.25) -> None:
        super().__init__(name="memory-sampler", daemon=True)
        self.interval_s = interval_s
        self.roots: list[int] = []
        self.peak_rss = 0
        self.peak_pss = 0
        self.samples = 0
        self._stop_event = threading.Event()

    def watch(self, pids: Iterable[int]) -> None:
        """Sample these trees from now on (replacing the previous ones)."""
        self.roots = list(pids)

    def run(self) -> None:
        while not self._stop_event.wait(self.interval_s):
            if not self.roots:
                continue
            rss, pss = memory(self.roots)
            self.samples += 1
            self.peak_rss = max(self.peak_rss, rss)
            self.peak_pss = max(self.peak_pss, pss)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5)


def stop_process(proc: subprocess.Popen[bytes], timeout_s: float = 30.0) -> int | None:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL its whole tree; returns its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            kill_tree(proc.pid)
    try:
        return proc.wait(10)
    except subprocess.TimeoutExpired:
        return None


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (descendants first listed, all killed at once)."""
    for p in reversed(tree(pid)):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


@dataclass
class RedisServer:
    """A throwaway ``redis-server`` on a free loopback port, no persistence, in a temp dir."""

    port: int = 0
    proc: subprocess.Popen[bytes] | None = None
    dir: Path | None = None
    version: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @staticmethod
    def missing_reason() -> str | None:
        """Why no redis-server can be started here, or None."""
        if shutil.which("redis-server") is None:
            return "redis-server is not installed (Debian: apt-get install redis-server)"
        return None

    def start(self, timeout_s: float = 20.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError(self.missing_reason())
        self.version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout.split()[2]
        self.version = self.version.removeprefix("v=")
        self.dir = Path(tempfile.mkdtemp(prefix="bench-redis-"))
        self.port = free_port()
        self.proc = subprocess.Popen(
            [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir), "--save", "",
             "--appendonly", "no", "--protected-mode", "yes", "--logfile", str(self.dir / "redis.log")],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        import redis

        client = redis.Redis(port=self.port)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server did not start; see {self.dir / 'redis.log'}") from None
                time.sleep(0.05)
        client.close()

    def flush(self) -> None:
        import redis

        client = redis.Redis(port=self.port)
        client.flushall()
        client.close()

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, 10)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None
