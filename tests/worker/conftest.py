"""Fixtures for the worker tests: ``inproc(project, concurrency=1, **overrides)``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.worker.inproc import InProcessWorker


@pytest.fixture
def inproc() -> Iterator[Callable[..., InProcessWorker]]:
    """Factory for :class:`InProcessWorker`; every one made is closed at teardown."""
    made: list[InProcessWorker] = []

    def make(project: Any, concurrency: int = 1, **overrides: Any) -> InProcessWorker:
        w = InProcessWorker(project, concurrency, **overrides)
        made.append(w)
        return w

    yield make
    for w in made:
        w.close()
