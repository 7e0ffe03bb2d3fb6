"""Process supervision for ``ktasks worker``: signals, and ``--reload``.

Kept out of the CLI so the command itself stays a thin layer. The first
SIGTERM or SIGINT asks the worker for a warm shutdown; a second one makes it
cold. ``--reload`` runs the worker in a subprocess and restarts it, warmly,
when the app's source changes.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from .worker import EXIT_ERROR, Worker

logger = logging.getLogger(__name__)

__all__ = ["run_worker", "Reloader"]

IGNORED_DIRS = {"__pycache__", ".git", ".hg", ".venv", "venv", ".tox", "node_modules", ".mypy_cache",
                ".pytest_cache", ".ruff_cache", "site-packages", "build", "dist"}


def run_worker(worker: Worker) -> int:
    """Run a worker in this process with signal handling; returns its exit code."""
    previous: dict[signal.Signals, Any] = {}

    def on_signal(signum: int, frame: FrameType | None) -> None:
        cold = worker._stop
        logger.warning("%s received: %s shutdown", signal.Signals(signum).name, "cold" if cold else "warm")
        worker.request_stop(cold=cold)

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        return worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _watched(path: str) -> bool:
    parts = Path(path).parts
    return path.endswith(".py") and not any(p in IGNORED_DIRS or p.startswith(".") for p in parts[:-1])


class Reloader:
    """Runs ``argv`` as a child process and restarts it when ``.py`` files under ``root`` change.

    Changes are debounced; a change that leaves a syntax error is reported and
    the old worker keeps running until the next change fixes it.
    """

    def __init__(self, argv: Sequence[str], root: Path, debounce_s: float = 0.5) -> None:
        self.argv = list(argv)
        self.root = root
        self.debounce_s = debounce_s
        self._changed = threading.Event()
        self._stop = False
        self._proc: subprocess.Popen[bytes] | None = None
        self._changed_paths: set[str] = set()

    def _on_change(self, path: str) -> None:
        if _watched(path):
            self._changed_paths.add(path)
            self._changed.set()

    def _syntax_errors(self) -> list[str]:
        errors = []
        for path in sorted(self._changed_paths):
            try:
                source = Path(path).read_bytes()
            except OSError:
                continue  # deleted
            try:
                compile(source, path, "exec")
            except SyntaxError as exc:
                errors.append(f"{path}:{exc.lineno}: {exc.msg}")
        return errors

    def _start(self) -> None:
        logger.info("reload: starting worker: %s", " ".join(self.argv))
        self._proc = subprocess.Popen(self.argv)

    def _stop_child(self) -> int | None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        proc.send_signal(signal.SIGTERM)
        try:
            return proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            return proc.wait()

    def run(self) -> int:
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        reloader = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    return
                for attr in ("src_path", "dest_path"):
                    p = getattr(event, attr, None)
                    if p:
                        reloader._on_change(os.fsdecode(p))

        def on_signal(signum: int, frame: FrameType | None) -> None:
            self._stop = True
            self._changed.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        observer = Observer()
        observer.schedule(Handler(), str(self.root), recursive=True)
        observer.start()
        logger.info("reload: watching %s for changes", self.root)
        self._start()
        try:
            while not self._stop:
                self._changed.wait(timeout=1.0)
                if self._stop:
                    break
                if not self._changed.is_set():
                    if self._proc is not None and self._proc.poll() is not None:
                        logger.error("reload: worker exited with code %s; waiting for a change",
                                     self._proc.returncode)
                        self._proc = None
                    continue
                time.sleep(self.debounce_s)  # debounce: let an editor finish writing
                self._changed.clear()
                errors = self._syntax_errors()
                paths, self._changed_paths = self._changed_paths, set()
                if errors:
                    for err in errors:
                        logger.error("reload: syntax error, not restarting: %s", err)
                    self._changed_paths |= paths  # check them again with the next change
                    continue
                logger.info("reload: %d file(s) changed (%s); restarting the worker warmly", len(paths),
                            ", ".join(sorted(os.path.relpath(p, self.root) for p in paths)[:5]))
                self._stop_child()
                self._start()
        finally:
            observer.stop()
            code = self._stop_child()
            observer.join(timeout=5)
        return 0 if code in (0, None) else code


def reload_argv(argv: Sequence[str]) -> list[str]:
    """The worker's own command line without ``--reload``, to run as the child."""
    return [sys.executable, "-m", "ktasks"] + [a for a in argv if a != "--reload"]


__all__ += ["reload_argv", "EXIT_ERROR"]
