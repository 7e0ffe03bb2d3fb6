"""A progress line for ``ktasks worker --burst`` on a terminal: done, rate, lag left, ETA.

:class:`BurstProgress` is a :class:`~ktasks.middleware.Middleware`: the CLI
adds it to the app in the worker parent (``--progress``, the default when
stderr is a terminal). On ``worker_started`` it starts a thread that redraws
one line every ``interval_s``::

    burst: 1,240 done (3 retried, 0 dead) · 412.5 tasks/s · 3,760 left · ETA 0:09

* *done* counts records with a final outcome (succeeded, skipped as already
  done by the ledger, or dead-lettered), from ``worker.stats``;
* the *rate* is over the last few seconds;
* *left* is the group's lag on the worker's task and retry topics, read with
  the admin API (end offset minus committed offset, as ``ktasks inspect``
  shows it), so it counts what other workers of the group still have too;
* the *ETA* is left divided by the rate.

The worker's own log lines go through :meth:`BurstProgress.attach_logging`,
which clears the progress line before each and redraws it after, so the two
never mix. Children log to the same terminal without that coordination, so
the CLI lowers their level to WARNING while the line is shown (unless a log
level was given explicitly).
"""

from __future__ import annotations

import logging
import shutil
import sys
import threading
import time
from collections import deque
from typing import Any, TextIO

from .middleware import Middleware

logger = logging.getLogger(__name__)

__all__ = ["BurstProgress", "format_line", "format_eta"]

_CLEAR = "\r\x1b[K"


def format_eta(seconds: float | None) -> str:
    """``0:09``, ``12:05``, ``2:03:04``; ``--:--`` when unknown."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--:--"
    s = int(round(max(0.0, seconds)))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def format_line(done: int, retried: int, dead: int, rate: float | None, left: int | None,
                elapsed_s: float) -> str:
    """The progress line, without terminal control characters."""
    parts = [f"burst: {done:,} done ({retried:,} retried, {dead:,} dead)"]
    parts.append(f"{rate:,.1f} tasks/s" if rate is not None else "-- tasks/s")
    if left is None:
        parts.append("? left")
        eta = None
    else:
        parts.append(f"{left:,} left")
        eta = 0.0 if left == 0 else (left / rate if rate else None)
    parts.append(f"ETA {format_eta(eta)}")
    parts.append(f"elapsed {format_eta(elapsed_s)}")
    return " · ".join(parts)


class _ClearingStream:
    """Wraps the log handler's stream: clears the progress line before a log line, redraws it after."""

    def __init__(self, stream: TextIO, progress: BurstProgress) -> None:
        self._stream = stream
        self._progress = progress

    def write(self, text: str) -> int:
        with self._progress._lock:
            shown = self._progress._shown
            if shown:
                self._stream.write(_CLEAR)
            n = self._stream.write(text)
            if shown and text.endswith("\n"):
                self._stream.write(self._progress._decorate(shown))
            self._stream.flush()
            return n

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


class BurstProgress(Middleware):
    """Draws the ``--burst`` progress line on ``stream`` (stderr) while the worker runs."""

    def __init__(self, stream: TextIO | None = None, interval_s: float = 0.5, lag_interval_s: float = 1.0,
                 window_s: float = 10.0) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.interval_s = interval_s
        self.lag_interval_s = lag_interval_s
        self.window_s = window_s
        self._lock = threading.RLock()
        self._shown = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._worker: Any = None
        self._samples: deque[tuple[float, int]] = deque()
        self._left: int | None = None
        self._next_lag = 0.0
        self._inspector: Any = None
        self._started = time.monotonic()

    # -- wiring ---------------------------------------------------------------------
    def attach_logging(self) -> None:
        """Route this process's ktasks log handler through the line-clearing stream."""
        for handler in logging.getLogger().handlers:
            if isinstance(handler, logging.StreamHandler) and getattr(handler, "_ktasks", False):
                if not isinstance(handler.stream, _ClearingStream):
                    handler.setStream(_ClearingStream(handler.stream, self))

    def worker_started(self, worker: Any) -> None:
        self._worker = worker
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._run, name="ktasks-progress", daemon=True)
        self._thread.start()

    def worker_stopped(self, worker: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._refresh_lag(force=True)
        done, retried, dead = self._counts()
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else None
        line = format_line(done, retried, dead, rate, self._left, elapsed)
        with self._lock:
            self.stream.write(_CLEAR + line + "\n")
            self.stream.flush()
            self._shown = ""
        if self._inspector is not None:
            self._inspector.close()

    # -- the line -------------------------------------------------------------------
    def _counts(self) -> tuple[int, int, int]:
        s = self._worker.stats
        return s.succeeded + s.skipped + s.dead_lettered, s.retried, s.dead_lettered

    def _rate(self, now: float, done: int) -> float | None:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window_s:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        if now - t0 < 0.5:
            return None
        return (done - d0) / (now - t0)

    def _refresh_lag(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_lag:
            return
        self._next_lag = now + self.lag_interval_s
        w = self._worker
        try:
            if self._inspector is None:
                from .inspect import Inspector

                self._inspector = Inspector(w.settings, f"{w.app.client_id}-progress", timeout_s=2.0)
            topics = list(w.topics) + [rt for t in w.topics for rt in w.app.retry_topics(t)]
            self._left = sum(p.lag for p in self._inspector.lag(w.group_id, topics).values())
        except Exception as exc:  # a progress line must never disturb the worker
            logger.debug("progress: cannot read the lag: %s", exc)

    def _decorate(self, line: str) -> str:
        width = shutil.get_terminal_size((100, 20)).columns
        if len(line) >= width:
            line = line[: max(10, width - 2)] + "…"
        # Leave the cursor at column 0, so a child's log line overwrites the progress line.
        return _CLEAR + line + "\r"

    def _draw(self) -> None:
        done, retried, dead = self._counts()
        now = time.monotonic()
        line = format_line(done, retried, dead, self._rate(now, done), self._left, now - self._started)
        with self._lock:
            self._shown = line
            self.stream.write(self._decorate(line))
            self.stream.flush()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._refresh_lag()
            try:
                self._draw()
            except Exception:  # never let the line kill anything
                logger.debug("progress: drawing failed", exc_info=True)
            self._stop.wait(self.interval_s)
