"""The docs site: it builds with mkdocs in strict mode, and its generated pages match the code."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from ktasks import clidoc
from ktasks.faults import POINTS

REPO = Path(__file__).resolve().parent.parent
DOCS = REPO / "docs"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None, reason="mkdocs is not installed")
def test_mkdocs_builds_without_warnings(tmp_path: Path) -> None:
    out = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log
    assert "WARNING" not in log, log
    for page in ("index", "quickstart", "concepts", "guarantees", "configuration", "cli", "deployment",
                 "performance", "ledger", "dead-letters", "failure-semantics", "protocol"):
        assert (tmp_path / "site" / f"{page}.html").exists(), page


def test_nav_names_every_page_once() -> None:
    nav = re.findall(r"^\s+- [^:]+: (\S+\.md)$", (REPO / "mkdocs.yml").read_text(), flags=re.M)
    assert sorted(nav) == sorted(p.name for p in DOCS.glob("*.md"))
    assert len(nav) == len(set(nav))


def test_cli_reference_is_up_to_date() -> None:
    committed = (DOCS / "cli.md").read_text()
    assert committed == clidoc.render(), "docs/cli.md is stale: run `python -m ktasks.clidoc docs/cli.md`"


def test_cli_reference_covers_every_command_and_option() -> None:
    from ktasks.cli import cli

    text = clidoc.render()
    ctx = click.Context(cli, info_name="ktasks")
    for name in cli.list_commands(ctx):
        command = cli.get_command(ctx, name)
        assert command is not None
        assert f"\n## ktasks {name}\n" in text
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.opts[-1] in text, f"ktasks {name} {param.opts[-1]}"
    assert "| `--progress / --no-progress` |" in text
    assert "ktasks inspect [OPTIONS]" in text


def test_clidoc_check_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    target = tmp_path / "cli.md"
    assert clidoc.main(["--check", str(target)]) == 1
    assert clidoc.main([str(target)]) == 0
    assert clidoc.main(["--check", str(target)]) == 0
    target.write_text(target.read_text() + "\nedited by hand\n")
    assert clidoc.main(["--check", str(target)]) == 1
    assert "python -m ktasks.clidoc" in capsys.readouterr().err


def test_clidoc_escapes_html_and_pipes_outside_code() -> None:
    @click.command()
    @click.option("--mode", type=click.Choice(["a", "b"]), help="Pick <one> | `x|y` stays.")
    def tool(mode: str) -> None:
        """Does <things> with `a<b`."""

    text = clidoc.render(tool, prog_name="tool")
    assert "Does &lt;things&gt; with `a<b`." in text
    assert "| `--mode [a|b]` | Pick &lt;one&gt; \\| `x|y` stays. |" in text


def test_failure_semantics_lists_every_fault_point() -> None:
    text = (DOCS / "failure-semantics.md").read_text()
    listed = set(re.findall(r"^\| `([a-z_]+)` \| (?:child|parent|relay) \|", text, flags=re.M))
    assert listed == set(POINTS)


def test_readme_links_to_existing_docs() -> None:
    readme = (REPO / "README.md").read_text()
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links, "README links to the docs"
    for link in links:
        assert (REPO / link).exists(), link
    assert "make quickstart\nmake test\n" in readme
