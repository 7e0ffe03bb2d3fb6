"""The app named without ``-A``: ``KTASKS_APP``, ``[tool.ktasks]`` in pyproject.toml, ``ktasks.toml``."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from ktasks.cli._app import AppLoadError, configured_app


def test_environment_wins_over_files(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.ktasks]\napp = "fromfile:app"\n')
    assert configured_app(tmp_path, {"KTASKS_APP": "fromenv:app"}) == ("fromenv:app", "KTASKS_APP", None)
    spec, where, folder = configured_app(tmp_path, {})
    assert (spec, folder) == ("fromfile:app", tmp_path.resolve()) and "[tool.ktasks]" in where


def test_nearest_config_upwards_and_ktasks_toml_first(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.ktasks]\napp = "outer:app"\n')
    inner = tmp_path / "pkg" / "sub"
    inner.mkdir(parents=True)
    assert configured_app(inner, {})[0] == "outer:app"
    (tmp_path / "pkg" / "ktasks.toml").write_text('app = "inner:app"\n')
    (tmp_path / "pkg" / "pyproject.toml").write_text('[tool.ktasks]\napp = "ignored:app"\n')
    assert configured_app(inner, {})[:1] == ("inner:app",)


def test_pyproject_without_a_ktasks_table_is_passed_over(tmp_path: Path) -> None:
    (tmp_path / "pyproject.toml").write_text('[tool.ktasks]\napp = "outer:app"\n')
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "pyproject.toml").write_text('[project]\nname = "x"\n')
    assert configured_app(tmp_path / "sub", {})[0] == "outer:app"


@pytest.mark.parametrize("text, message", [
    ('[tool.ktasks]\napps = "x:app"\n', "unknown key 'apps'"),
    ('[tool.ktasks]\napp = 3\n', "app must be a non-empty string"),
    ('[tool.ktasks\n', "cannot read it"),
])
def test_bad_config_is_an_error_naming_the_file(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "pyproject.toml").write_text(text)
    with pytest.raises(AppLoadError, match=message) as info:
        configured_app(tmp_path, {})
    assert "pyproject.toml" in str(info.value)


def _ktasks(args: list[str], cwd: Path, env: dict[str, str], timeout_s: float = 120) -> Any:
    return subprocess.run([sys.executable, "-m", "ktasks", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout_s)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KTASKS_APP", "PYTHONPATH")}
    env.update(extra)
    return env


def test_no_app_anywhere_says_how_to_name_one(tmp_path: Path) -> None:
    out = _ktasks(["worker", "-c", "1", "--burst"], tmp_path, _env())
    assert out.returncode == 2
    assert "KTASKS_APP" in out.stderr and "[tool.ktasks]" in out.stderr and "-A" in out.stderr


@pytest.mark.parametrize("how", ["env", "pyproject"])
def test_worker_without_dash_a(project: Any, how: str) -> None:
    """``ktasks worker -c 1 --burst`` with the app named by KTASKS_APP or by pyproject.toml."""
    p = project("@app.task\ndef work(n):\n    effect('ran', n=n)\n")
    for n in range(5):
        p.app_module.work.delay(n)
    p.app.flush()
    if how == "env":
        env = _env(KTASKS_APP=f"{p.module}:app", PYTHONPATH=str(p.dir))
        cwd = p.dir.parent  # the module is found through PYTHONPATH, not the current folder
    else:
        (p.dir / "pyproject.toml").write_text(f'[tool.ktasks]\napp = "{p.module}:app"\n')
        (p.dir / "sub").mkdir()
        env, cwd = _env(), p.dir / "sub"  # found upwards; imported from the config's folder
    out = _ktasks(["worker", "-c", "1", "--burst", "--no-progress"], cwd, env)
    assert out.returncode == 0, out.stderr[-4000:]
    assert Counter(e["n"] for e in p.effects("ran")) == Counter(range(5))
