"""Process supervision for ``ktasks worker``: signals, and ``--reload``.

Kept out of the CLI so the command itself stays a thin layer. The first
SIGTERM or SIGINT asks the worker for a warm shutdown; a second one makes it
cold.

``--reload`` runs the worker as a child process (``python -m ktasks worker
...`` without ``--reload``) and watches the app's source tree with watchdog.
When ``.py`` files are written, created, moved or deleted, and no further
change arrives for the debounce period, the worker is stopped warmly
(in-flight tasks finish, their offsets are committed, it leaves the group)
and a new one starts with the new code. Nothing is lost: records the old
worker had not finished are uncommitted, so the new one runs them. Opening or
reading a file (an import, an editor) is not a change. Before the running
worker is stopped, the changed code must compile and the app must import (in
a fresh interpreter, as the new worker would import it): a syntax error or an
exception at import is reported and the running worker is kept, with the
previous code, until the next change. A new worker that fails to start for
another reason is reported too, and the reloader waits for the next change
instead of exiting.

The worker child runs in its own session, so a Ctrl-C in the terminal reaches
only the reloader, which passes it on once (warm) or, on a second Ctrl-C,
again (cold). The child is told the reloader's pid through
``KTASKS_SUPERVISOR_PID`` and calls :func:`die_with_supervisor`, so it shuts
down warmly if the reloader is killed.
"""

from __future__ import annotations

import ctypes
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

__all__ = ["run_worker", "Reloader", "reload_argv", "die_with_supervisor", "SUPERVISOR_ENV", "EXIT_ERROR"]

#: Folders never watched, wherever they are under the root (hidden ones are skipped too).
IGNORED_DIRS = {"__pycache__", ".git", ".hg", ".venv", "venv", "env", ".tox", ".nox", "node_modules",
                ".mypy_cache", ".pytest_cache", ".ruff_cache", "site-packages", "build", "dist", ".eggs"}

#: watchdog event types that mean the file's content (or existence) changed; "opened" and
#: "closed_no_write" (someone read it, e.g. the new worker importing it) do not.
CHANGE_EVENTS = {"created", "modified", "moved", "deleted", "closed"}

#: Environment variable naming the reloader's pid in the worker it runs.
SUPERVISOR_ENV = "KTASKS_SUPERVISOR_PID"

#: Imports the app as a new worker would (``-A`` spec, else KTASKS_APP or the project's config).
_IMPORT_CHECK = """
import sys
from ktasks.cli._app import load_app, resolve_app_spec
resolve_app_spec(None, required=False)
load_app(sys.argv[1])
"""

#: Longest the import check may take before the change is reported as not importable.
IMPORT_CHECK_TIMEOUT_S = 60.0


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


def die_with_supervisor() -> None:
    """In a worker started by :class:`Reloader`: get SIGTERM (a warm shutdown) if the reloader dies.

    A no-op unless ``KTASKS_SUPERVISOR_PID`` is set. On Linux this asks the
    kernel (``PR_SET_PDEATHSIG``); if the reloader is already gone, the
    worker signals itself at once.
    """
    expected = os.environ.pop(SUPERVISOR_ENV, None)
    if not expected:
        return
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL("libc.so.6", use_errno=True)
            libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
        except OSError:
            logger.debug("prctl(PR_SET_PDEATHSIG) unavailable", exc_info=True)
    if str(os.getppid()) != expected:
        os.kill(os.getpid(), signal.SIGTERM)


def _watched(path: str, root: Path) -> bool:
    """Whether a change to ``path`` should restart the worker: a ``.py`` file, outside ignored folders.

    Only the part of the path below ``root`` counts, so a project that itself
    lives under a hidden or ``build`` folder is still watched.
    """
    if not path.endswith(".py"):
        return False
    p = Path(path)
    try:
        parts = p.relative_to(root).parts
    except ValueError:
        try:
            parts = p.resolve().relative_to(root.resolve()).parts
        except ValueError:
            return False
    if not parts or parts[-1].startswith("."):
        return False
    return not any(d in IGNORED_DIRS or d.startswith(".") for d in parts[:-1])


class Reloader:
    """Runs ``argv`` as a child process and restarts it when ``.py`` files under ``root`` change.

    Changes are debounced (restart once no change arrived for
    ``debounce_s``); a change that leaves a syntax error is reported and the
    old worker keeps running until the next change fixes it.
    """

    def __init__(self, argv: Sequence[str], root: Path, debounce_s: float = 0.5,
                 stop_timeout_s: float = 120.0, app_spec: str | None = None) -> None:
        self.argv = list(argv)
        self.root = root
        self.app_spec = app_spec
        self.debounce_s = debounce_s
        self.stop_timeout_s = stop_timeout_s
        self._changed = threading.Event()
        self._lock = threading.Lock()
        self._changed_paths: set[str] = set()
        self._stop = False
        self._signals = 0
        self._proc: subprocess.Popen[bytes] | None = None

    # -- watching ---------------------------------------------------------------------
    def on_event(self, event_type: str, paths: Sequence[str]) -> None:
        """Called by the watchdog thread for each file event."""
        if event_type not in CHANGE_EVENTS:
            return
        hit = [p for p in paths if _watched(p, self.root)]
        if hit:
            with self._lock:
                self._changed_paths.update(hit)
            self._changed.set()

    def _take_changes(self) -> set[str]:
        with self._lock:
            paths, self._changed_paths = self._changed_paths, set()
        return paths

    def _settle(self) -> None:
        """Debounce: return once no change arrived for ``debounce_s`` (an editor finished saving)."""
        deadline = time.monotonic() + max(10.0, 20 * self.debounce_s)
        while not self._stop and time.monotonic() < deadline:
            self._changed.clear()
            if not self._changed.wait(self.debounce_s):
                return

    @staticmethod
    def syntax_errors(paths: Sequence[str]) -> list[str]:
        """``path:line: message`` for each file that does not compile (deleted files are skipped)."""
        errors = []
        for path in sorted(paths):
            try:
                source = Path(path).read_bytes()
            except OSError:
                continue
            try:
                compile(source, path, "exec", dont_inherit=True)
            except SyntaxError as exc:
                errors.append(f"{path}:{exc.lineno}: {exc.msg}")
        return errors

    def import_error(self) -> str | None:
        """Why the app does not import now (the exception's last lines), or None if it does.

        Run in a fresh interpreter, so this process never imports user code and
        the check sees exactly what a new worker would.
        """
        if not self.app_spec:
            return None
        try:
            out = subprocess.run([sys.executable, "-c", _IMPORT_CHECK, self.app_spec], capture_output=True,
                                 text=True, timeout=IMPORT_CHECK_TIMEOUT_S, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"importing {self.app_spec} did not finish within {IMPORT_CHECK_TIMEOUT_S:.0f}s"
        if out.returncode == 0:
            return None
        lines = [line for line in out.stderr.strip().splitlines() if line.strip()]
        where = [line.strip() for line in lines if line.lstrip().startswith("File ")]
        return (lines[-1] if lines else f"exit code {out.returncode}") + (f" ({where[-1]})" if where else "")

    # -- the child --------------------------------------------------------------------
    def _start(self) -> None:
        logger.info("reload: starting worker: %s", " ".join(self.argv))
        env = dict(os.environ)
        env[SUPERVISOR_ENV] = str(os.getpid())
        # Its own session: a terminal's Ctrl-C reaches only us, and we pass it on exactly once.
        self._proc = subprocess.Popen(self.argv, env=env, start_new_session=True)

    def _stop_child(self) -> int | None:
        """Stop the worker warmly; kill it if it is still running after ``stop_timeout_s``."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                logger.error("reload: worker did not stop within %.0fs; killing it", self.stop_timeout_s)
                proc.kill()
                proc.wait()
        self._proc = None
        return proc.returncode

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._signals += 1
        self._stop = True
        self._changed.set()
        proc = self._proc
        if self._signals > 1 and proc is not None and proc.poll() is None:
            # A second Ctrl-C while the worker stops warmly: pass it on, making it cold.
            logger.warning("reload: %s again: cold shutdown", signal.Signals(signum).name)
            proc.send_signal(signal.SIGTERM)

    # -- the loop ---------------------------------------------------------------------
    def run(self) -> int:
        """Watch and restart until SIGTERM/SIGINT; returns the last worker's exit code."""
        from watchdog.events import FileSystemEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        reloader = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event: FileSystemEvent) -> None:
                if event.is_directory:
                    return
                paths = [os.fsdecode(p) for p in (event.src_path, getattr(event, "dest_path", None)) if p]
                reloader.on_event(event.event_type, paths)

        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        observer = Observer()
        observer.schedule(Handler(), str(self.root), recursive=True)
        observer.start()
        logger.info("reload: watching %s for changes", self.root)
        code: int | None = None
        try:
            self._start()
            while not self._stop:
                if not self._changed.wait(timeout=1.0):
                    proc = self._proc
                    if proc is not None and proc.poll() is not None:
                        logger.error("reload: worker exited with code %s; waiting for a change",
                                     proc.returncode)
                        code, self._proc = proc.returncode, None
                    continue
                self._settle()
                if self._stop:
                    break
                paths = self._take_changes()
                if not paths:
                    continue
                errors = self.syntax_errors(list(paths))
                failed = "syntax error" if errors else None
                if not errors:
                    error = self.import_error()
                    errors, failed = ([error], "the app fails at import") if error else ([], None)
                if errors:
                    running = self._proc is not None and self._proc.poll() is None
                    for err in errors:
                        logger.error("reload: %s, not restarting (%s): %s", failed,
                                     "the running worker keeps the previous code" if running
                                     else "no worker is running", err)
                    with self._lock:
                        self._changed_paths |= paths  # checked again with the next change
                    continue
                shown = sorted(os.path.relpath(p, self.root) for p in paths)
                running = self._proc is not None and self._proc.poll() is None
                logger.info("reload: %d file(s) changed (%s); %s", len(paths),
                            ", ".join(shown[:5]) + (", ..." if len(shown) > 5 else ""),
                            "restarting the worker warmly" if running else "starting the worker")
                self._stop_child()
                if not self._stop:
                    self._start()
        finally:
            observer.stop()
            stopped = self._stop_child()
            code = stopped if stopped is not None else code
            observer.join(timeout=5)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        logger.info("reload: stopped")
        return 0 if code in (0, None) else code


def reload_argv(argv: Sequence[str]) -> list[str]:
    """The worker's own command line without ``--reload``, to run as the child."""
    return [sys.executable, "-m", "ktasks"] + [a for a in argv if a != "--reload"]
