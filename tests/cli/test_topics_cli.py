"""``ktasks topics create|list`` and the ``-A module[:attr]`` app loader, against the real broker."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner
from kafka.admin import ConfigResource, ConfigResourceType

from ktasks import App
from ktasks.cli import cli
from ktasks.cli._app import AppLoadError, load_app
from tests.helpers import create_topic, wait_until


def _module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, body: str) -> str:
    """Write an importable module (unique name) and return its name."""
    name = "m_" + os.urandom(6).hex()
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    monkeypatch.syspath_prepend(str(tmp_path))
    return name


@pytest.fixture
def app_module(tmp_path, monkeypatch, kafka_bootstrap, unique):
    """A module defining one App with one task, on the test broker and a unique topic (and app name)."""
    topic = unique("cli")
    name = _module(tmp_path, monkeypatch, f"""
        from ktasks import App
        app = App({topic!r}, bootstrap_servers={kafka_bootstrap!r}, default_topic={topic!r}, partitions=3,
                  retry_tiers_ms=[1000, 30000], reports_topic={topic + ".reports"!r})

        @app.task
        def job(x):
            return x
    """)
    return name, topic


def _partitions(admin, topics):
    return {d["name"]: len(d["partitions"]) for d in admin.describe_topics(topics) if not d["error_code"]}


def _invoke(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def test_create_makes_task_retry_and_dead_letter_topics(app_module, kafka_admin):
    module, topic = app_module
    expected = [topic, f"{topic}.retry-1000ms", f"{topic}.retry-30000ms", f"{topic}.DLT", f"{topic}.ledger"]
    # The app's own topics (the app is named like its topic here), which a worker with
    # auto_create_topics off would otherwise wait for, or retry forever without.
    own = {f"{topic}.revocations": 1, f"{topic}.scheduled": 4, f"{topic}.replies": 16, f"{topic}.results": 12,
           f"{topic}.chords": 3, f"{topic}.reports": 1}       # their own settings' partitions; chords: the app's
    result = _invoke("topics", "create", "-A", module, "--partitions", "2", "--replication-factor", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert [line.split()[:2] for line in lines] == [["created", t] for t in [*expected, *own]]
    assert "(2 partitions, replication factor 1; tasks)" in lines[0]
    assert _partitions(kafka_admin, expected) == dict.fromkeys(expected, 2)
    assert _partitions(kafka_admin, list(own)) == own
    configs = kafka_admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, f"{topic}.revocations")])
    assert configs["topic"][f"{topic}.revocations"]["cleanup.policy"]["value"] == "compact,delete"

    again = _invoke("topics", "create", "-A", f"{module}:app", "--partitions", "2")
    assert again.exit_code == 0
    assert [line.split()[:2] for line in again.output.splitlines()] == [["exists", t] for t in [*expected, *own]]
    assert "(2 partitions; tasks)" in again.output

    # Without --partitions the app's 3 apply: every topic is reported short, none is changed.
    short = _invoke("topics", "create", "-A", module)
    assert short.exit_code == 0
    assert [line.split()[:2] for line in short.output.splitlines()[:5]] == [["WARNING", t] for t in expected]
    assert _partitions(kafka_admin, expected) == dict.fromkeys(expected, 2)

    listed = _invoke("topics", "list", "-A", module)
    assert listed.exit_code == 0
    for t in expected:
        assert re.search(rf"^{re.escape(t)}\s+2 partitions", listed.output, re.M)


def test_create_reports_an_existing_topic_with_fewer_partitions(app_module, kafka_admin):
    module, topic = app_module
    create_topic(kafka_admin, topic, partitions=1)
    result = _invoke("topics", "create", "-A", module)
    assert result.exit_code == 0, result.output
    first, *rest = result.output.splitlines()
    assert first.startswith(f"WARNING  {topic} exists with 1 partitions, fewer than the configured 3; not changed")
    assert [line.split()[0] for line in rest[:3]] == ["created"] * 3
    assert "1 topic(s) have fewer partitions than configured" in result.output  # stderr, mixed in by CliRunner
    assert _partitions(kafka_admin, [topic]) == {topic: 1}
    listed = _invoke("topics", "list", "-A", module)
    assert re.search(rf"^{re.escape(topic)}\s+1 partitions\s+tasks\s+WARNING fewer than the configured 3",
                     listed.output, re.M)


def test_list_shows_missing_topics(app_module):
    module, topic = app_module
    result = _invoke("topics", "list", "-A", module)
    assert result.exit_code == 0
    assert re.search(rf"^{re.escape(topic)}\s+missing\s+tasks$", result.output, re.M)
    assert re.search(rf"^{re.escape(topic)}\.DLT\s+missing\s+dead letters$", result.output, re.M)


def test_task_partitions_option_is_used(tmp_path, monkeypatch, kafka_bootstrap, kafka_admin, unique):
    wide = unique("wide")
    module = _module(tmp_path, monkeypatch, f"""
        from ktasks import App
        app = App("cli-wide", bootstrap_servers={kafka_bootstrap!r}, partitions=2, retry_tiers_ms=[1000])

        @app.task(topic={wide!r}, partitions=4)
        def job():
            pass
    """)
    assert _invoke("topics", "create", "-A", module).exit_code == 0
    assert _partitions(kafka_admin, [wide, f"{wide}.retry-1000ms", f"{wide}.DLT"]) == {
        wide: 4, f"{wide}.retry-1000ms": 4, f"{wide}.DLT": 4}


def test_broker_errors_are_one_line(tmp_path, monkeypatch, kafka_bootstrap, unique):
    module = _module(tmp_path, monkeypatch, f"""
        from ktasks import App
        app = App("cli-rf", bootstrap_servers={kafka_bootstrap!r}, default_topic={unique("rf")!r})
    """)
    result = CliRunner().invoke(cli, ["topics", "create", "-A", module, "--replication-factor", "3"])
    assert result.exit_code == 1
    assert "Error: creating topic" in result.output and "replication factor" in result.output


def test_console_script_from_the_project_directory(app_module, tmp_path, kafka_admin):
    module, topic = app_module
    exe = shutil.which("ktasks", path=os.path.dirname(sys.executable)) or "ktasks"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([exe, "topics", "create", "-A", module], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].startswith(f"created  {topic}  (3 partitions")


# -- the -A loader ----------------------------------------------------------------

def test_load_app_finds_the_one_app(tmp_path, monkeypatch):
    module = _module(tmp_path, monkeypatch, """
        from ktasks import App
        app = App("one")
        alias = app            # the same App under two names is still one App
        class Holder:
            inner = App("inner")
    """)
    found = load_app(module)
    assert isinstance(found, App) and found.name == "one"
    assert load_app(f"{module}:alias") is found
    assert load_app(f"{module}:Holder.inner").name == "inner"


@pytest.mark.parametrize(
    ("body", "spec_suffix", "fragment"),
    [
        ("x = 1\n", "", "defines no ktasks App at top level; name one with -A"),
        ("from ktasks import App\na = App('a')\nb = App('b')\n", "",
         "defines several ktasks Apps; pick one: {m}:a ('a'), {m}:b ('b')"),
        ("from ktasks import App\napp = App('a')\n", ":nope", "has no attribute 'nope'"),
        ("from ktasks import App\napp = App('a')\nx = 3\n", ":x", "'x' is a int, not a ktasks App"),
    ],
)
def test_load_app_errors_name_the_problem(tmp_path, monkeypatch, body, spec_suffix, fragment):
    module = _module(tmp_path, monkeypatch, body)
    with pytest.raises(AppLoadError) as info:
        load_app(module + spec_suffix)
    assert fragment.format(m=module) in info.value.message


def test_load_app_missing_module_vs_broken_module(tmp_path, monkeypatch):
    with pytest.raises(AppLoadError, match="no module named 'surely_not_a_module_x'"):
        load_app("surely_not_a_module_x:app")
    broken = _module(tmp_path, monkeypatch, "import surely_not_a_dependency_y\n")
    with pytest.raises(ModuleNotFoundError, match="surely_not_a_dependency_y"):
        load_app(broken)  # an import failing inside the module keeps its own traceback


def test_cli_reports_a_bad_app_as_a_usage_error():
    result = CliRunner().invoke(cli, ["topics", "list", "-A", "json"])
    assert result.exit_code == 2
    assert "module 'json' defines no ktasks App" in result.output


def test_check_reports_topics_that_differ_from_the_settings(tmp_path, monkeypatch, kafka_bootstrap, kafka_admin,
                                                            unique):
    topic = unique("check")
    module = _module(tmp_path, monkeypatch, f"""
        from ktasks import App
        app = App({topic!r}, bootstrap_servers={kafka_bootstrap!r}, default_topic={topic!r}, partitions=2,
                  retry_tiers_ms=[1000], topic_configs={{"retention.ms": "86400000"}},
                  reports_topic={topic + ".reports"!r})

        @app.task
        def job(x):
            return x
    """)
    create_topic(kafka_admin, topic, partitions=2, configs={"retention.ms": "1000"})
    result = CliRunner().invoke(cli, ["topics", "check", "-A", module])
    assert result.exit_code == 1
    lines = result.stdout.splitlines()
    assert lines[0].split()[:2] == ["DIFFERS", topic] and "retention.ms=1000, configured 86400000" in lines[0]
    others = [f"{topic}.{suffix}" for suffix in ("retry-1000ms", "DLT", "ledger", "revocations", "scheduled",
                                                  "replies", "results", "chords", "reports")]
    assert [line.split()[:3] for line in lines[1:]] == [["DIFFERS", t, "missing"] for t in others]
    assert "10 of 10 topic(s) differ" in result.stderr

    kafka_admin.delete_topics([topic])
    assert _invoke("topics", "create", "-A", module).exit_code == 0
    result = CliRunner().invoke(cli, ["topics", "check", "-A", module])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.stdout.splitlines()] == ["ok"] * 10

    # A changelog that is not compacted would lose entries to retention: check says so.
    kafka_admin.delete_topics([f"{topic}.ledger"])
    wait_until(lambda: not _partitions(kafka_admin, [f"{topic}.ledger"]), 30, message="changelog deleted")
    create_topic(kafka_admin, f"{topic}.ledger", partitions=2, configs={"cleanup.policy": "delete"})
    result = CliRunner().invoke(cli, ["topics", "check", "-A", module])
    assert result.exit_code == 1
    [line] = [line for line in result.stdout.splitlines() if f"{topic}.ledger" in line]
    assert line.startswith("DIFFERS") and "cleanup.policy=delete, configured compact,delete" in line
