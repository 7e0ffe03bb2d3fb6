"""``ktasks worker --reload``: edit a task module under a running worker; the next task runs the new code.

The reloader watches the app's folder, restarts the worker warmly when a
``.py`` file changes (finished work committed, nothing lost), reports a syntax
error or an exception at import instead of restarting, and ignores files that
are only read.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ktasks.supervisor import _watched
from tests.fixtures.worker import wait_effects
from tests.helpers import wait_until

SOURCE = """
VERSION = 1

@app.task
def which(n):
    effect("ran", n=n, version=VERSION)
"""


def log_after(w: Any, marker: str) -> str:
    """The worker log from the last occurrence of ``marker`` on ('' if it never appeared)."""
    log = w.log()
    at = log.rfind(marker)
    return log[at:] if at >= 0 else ""


def wait_restarted(w: Any, restarts: int, timeout_s: float = 90.0) -> None:
    """Wait until the reloader restarted the worker ``restarts`` times and the new one was assigned."""
    marker = "restarting the worker warmly"
    wait_until(lambda: w.log().count(marker) >= restarts and "partitions assigned: " in log_after(w, marker),
               timeout_s, message=f"restart {restarts} never completed")


def test_reload_runs_new_code_reports_syntax_errors_and_loses_nothing(project: Any) -> None:
    p = project(SOURCE, partitions=2)
    module_path: Path = p.dir / f"{p.module}.py"
    original = module_path.read_text()
    which = p.app_module.which          # imported (read) before the worker starts watching
    w = p.worker("-c", "1", "--reload")
    w.wait_for_log("reload: watching")
    w.wait_assigned()

    # Version 1 runs.
    which.delay(0)
    p.app.flush()
    assert wait_effects(p, "ran", 1)[0]["version"] == 1

    # A syntax error is reported, the worker is not restarted and keeps running the old code.
    module_path.write_text(original.replace("VERSION = 1", "VERSION = (1"))
    w.wait_for_log("syntax error")
    assert "restarting the worker" not in w.log()
    which.delay(1)
    p.app.flush()
    ran = wait_effects(p, "ran", 2)
    assert [(e["n"], e["version"]) for e in ran] == [(0, 1), (1, 1)]

    # Fixing it (as version 2) restarts the worker warmly. Tasks sent while it restarts are not lost.
    module_path.write_text(original.replace("VERSION = 1", "VERSION = 2"))
    w.wait_for_log("restarting the worker warmly")
    for n in range(2, 12):
        which.delay(n)
    p.app.flush()
    wait_restarted(w, 1)

    # Once the new worker is in, the next task runs the new code.
    for n in range(12, 22):
        which.delay(n)
    p.app.flush()
    ran = wait_effects(p, "ran", 22)
    counts = Counter(e["n"] for e in ran)
    assert set(counts) == set(range(22)), "every enqueued task ran"
    assert max(counts.values()) == 1, "none ran twice"
    assert {e["version"] for e in ran if e["n"] >= 12} == {2}
    assert "worker stopped after" in w.log(), "the old worker shut down warmly"

    # Reading a file (an import, an editor opening it) does not restart anything; a real edit does.
    assert module_path.read_text()
    module_path.write_text(original.replace("VERSION = 1", "VERSION = 3"))
    wait_restarted(w, 2)
    which.delay(22)
    p.app.flush()
    ran = wait_effects(p, "ran", 23)
    assert [e["version"] for e in ran if e["n"] == 22] == [3]
    assert w.log().count("restarting the worker warmly") == 2

    assert w.stop() == 0
    assert w.log().count("worker stopped after") == 3


def test_an_exception_at_import_keeps_the_running_worker_and_the_fix_restarts_it(project: Any) -> None:
    p = project(SOURCE)
    module_path: Path = p.dir / f"{p.module}.py"
    original = module_path.read_text()
    which = p.app_module.which
    w = p.worker("-c", "1", "--reload")
    w.wait_assigned()
    # Compiles, but raises at import: reported, and the running worker goes on with the old code.
    module_path.write_text(original.replace("VERSION = 1", "VERSION = NO_SUCH_NAME"))
    w.wait_for_log("the app fails at import")
    assert "the running worker keeps the previous code): NameError: name 'NO_SUCH_NAME' is not defined" \
        in w.log()
    assert "restarting the worker" not in w.log() and "worker stopped after" not in w.log()
    which.delay(0)
    p.app.flush()
    assert wait_effects(p, "ran", 1)[0]["version"] == 1
    # The fix restarts it warmly with the new code.
    module_path.write_text(original.replace("VERSION = 1", "VERSION = 2"))
    wait_restarted(w, 1)
    which.delay(1)
    p.app.flush()
    assert [e["version"] for e in wait_effects(p, "ran", 2) if e["n"] == 1] == [2]
    assert w.stop() == 0


def test_the_worker_stops_warmly_when_the_reloader_is_killed(project: Any) -> None:
    p = project(SOURCE)
    w = p.worker("-c", "1", "--reload")
    w.wait_assigned()
    pids = set(re.findall(r"\[worker:(\d+)\] ktasks\.worker\.worker: worker for app", w.log()))
    assert len(pids) == 1
    child = int(pids.pop())
    assert child != w.pid
    w.kill()                          # SIGKILL: the reloader cannot pass anything on

    def gone() -> bool:
        try:
            os.kill(child, 0)
        except ProcessLookupError:
            return True
        return False

    wait_until(gone, 60, message="the worker outlived its reloader")
    assert "SIGTERM received: warm shutdown" in w.log()
    assert "worker stopped after" in w.log()


@pytest.mark.parametrize(("path", "watched"), [
    ("tasks.py", True),
    ("pkg/jobs.py", True),
    ("tasks.pyc", False),
    ("notes.txt", False),
    ("__pycache__/tasks.cpython-311.py", False),
    (".git/hooks/x.py", False),
    (".venv/lib/python3.11/site-packages/x.py", False),
    ("venv/lib/x.py", False),
    ("node_modules/x.py", False),
    (".tasks.py.swp", False),
])
def test_watched_paths(tmp_path: Path, path: str, watched: bool) -> None:
    assert _watched(str(tmp_path / path), tmp_path) is watched


def test_a_project_under_a_hidden_or_build_folder_is_still_watched(tmp_path: Path) -> None:
    root = tmp_path / ".config" / "build" / "project"
    assert _watched(str(root / "tasks.py"), root)
