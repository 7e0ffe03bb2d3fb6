"""Helpers for tests: import them as ``from tests.helpers import wait_until``."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

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
