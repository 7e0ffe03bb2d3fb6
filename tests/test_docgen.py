"""docs/configuration.md is generated from the settings and checked for staleness."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from ktasks import docgen
from ktasks.settings import SETTINGS

REPO = Path(__file__).resolve().parent.parent


def test_reference_lists_every_setting_under_its_group():
    text = docgen.render()
    sections = re.split(r"^## ", text, flags=re.M)[1:]
    by_group = {s.split("\n", 1)[0]: s for s in sections}
    assert list(by_group) == list(dict.fromkeys(s.group for s in SETTINGS.values()))
    for name, setting in SETTINGS.items():
        row = next(line for line in by_group[setting.group].splitlines() if line.startswith(f"| `{name}` |"))
        assert f"`{setting.env_var}`" in row
        assert setting.doc.split("`")[0][:30] in row
    assert "| `partitions` | `KTASKS_PARTITIONS` | int | `6` |" in text
    assert "| `eager` | `KTASKS_EAGER` | bool | `false` |" in text
    assert "| `default_topic` | `KTASKS_DEFAULT_TOPIC` | str or none | none |" in text
    assert '`[1000, 10000, 60000, 600000]`' in text and "one of `gzip`, `snappy`" in text


def test_write_then_check(tmp_path, capsys):
    target = tmp_path / "docs" / "configuration.md"
    assert docgen.main(["--check", str(target)]) == 1  # missing
    assert "missing" in capsys.readouterr().err
    assert docgen.main([str(target)]) == 0
    assert target.read_text() == docgen.render()
    assert docgen.main(["--check", str(target)]) == 0
    target.write_text(target.read_text().replace("`6`", "`8`"))
    assert docgen.main(["--check", str(target)]) == 1
    assert "stale; run: python -m ktasks.docgen" in capsys.readouterr().err


def test_the_committed_reference_is_current():
    proc = subprocess.run([sys.executable, "-m", "ktasks.docgen", "--check", "docs/configuration.md"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
