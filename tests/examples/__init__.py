"""Tests of the runnable examples, each against the session's broker."""

from __future__ import annotations

import os
import subprocess
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


ROOT = Path(__file__).resolve().parents[2]


def run_example(name: str, env: dict[str, str], timeout_s: float = 240) -> tuple[str, str]:
    """Run ``examples/<name>/run.sh`` as its README says; assert it exits 0; return (stdout, stdout+stderr)."""
    readme = (ROOT / "examples" / name / "README.md").read_text()
    assert f"    bash examples/{name}/run.sh\n" in readme, "the README shows how to run it"
    out = subprocess.run(["bash", str(ROOT / "examples" / name / "run.sh")], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout_s)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    return out.stdout, log
