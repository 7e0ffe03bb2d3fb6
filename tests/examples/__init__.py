"""Tests of the runnable examples, each against the session's broker."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any


def example_env(kafka_bootstrap: str, unique: Any, name: str, ledger: Path) -> dict[str, str]:
    """Environment for an example's run.sh: this test's broker, topic, group and ledger; the venv's ktasks."""
    env = dict(os.environ)
    env.update(
        KTASKS_BOOTSTRAP_SERVERS=kafka_bootstrap,
        KTASKS_DEFAULT_TOPIC=unique(name),
        KTASKS_GROUP_ID=unique(name),
        KTASKS_LEDGER_PATH=str(ledger),
        PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
    )
    return env
