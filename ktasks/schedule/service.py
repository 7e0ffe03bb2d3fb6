"""The background threads of scheduling: run until stopped, start over after a failure."""

from __future__ import annotations

import logging
import threading

from ..readiness import log_failure

logger = logging.getLogger(__name__)

__all__ = ["ServiceThread"]

#: Pause before starting over after a failure (a broker outage, a deleted topic, a fenced producer).
RESTART_PAUSE_S = 2.0


class ServiceThread(threading.Thread):
    """A daemon thread running :meth:`serve` until :meth:`stop`; a failure is logged and it starts over.

    ``serve`` builds its own Kafka clients each time, so starting over reads
    the state again from the topics: nothing carries over from the failed run
    but what :meth:`reset` keeps.
    """

    def __init__(self, name: str) -> None:
        super().__init__(name=name, daemon=True)
        self._halt = threading.Event()

    def stop(self) -> None:
        self._halt.set()

    @property
    def stopping(self) -> bool:
        return self._halt.is_set()

    def serve(self) -> None:
        raise NotImplementedError

    def reset(self) -> None:
        """Called after ``serve`` failed, before it starts over: give up what it owned."""

    def run(self) -> None:
        while not self._halt.is_set():
            try:
                self.serve()
                return
            except Exception as exc:
                log_failure(logger, self.name, exc, f"starting over in {RESTART_PAUSE_S:.0f} s")
                self.reset()
                self._halt.wait(RESTART_PAUSE_S)
