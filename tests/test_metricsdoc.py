"""The metrics reference in docs/monitoring.md is generated from ktasks.metrics.METRICS."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from ktasks import metricsdoc
from ktasks.metrics import METRICS

REPO = Path(__file__).resolve().parent.parent


def test_reference_has_a_row_per_metric():
    text = metricsdoc.render()
    for m in METRICS:
        assert f"| `{m.name}` | {m.kind} |" in text
    assert text.startswith(metricsdoc.BEGIN) and text.endswith(metricsdoc.END)


def test_splice_replaces_only_the_block(tmp_path, capsys):
    page = tmp_path / "monitoring.md"
    page.write_text(f"# Title\n\n{metricsdoc.BEGIN}\nOLD-TEXT\n{metricsdoc.END}\n\nmore text\n")
    assert metricsdoc.main(["--check", str(page)]) == 1
    assert "stale metrics reference" in capsys.readouterr().err
    assert metricsdoc.main([str(page)]) == 0
    text = page.read_text()
    assert text.startswith("# Title\n") and text.endswith("\n\nmore text\n") and "OLD-TEXT" not in text
    assert metricsdoc.main(["--check", str(page)]) == 0
    page.write_text("# no markers\n")
    assert metricsdoc.main(["--check", str(page)]) == 1
    assert "no metrics reference markers" in capsys.readouterr().err


def test_the_committed_reference_is_current():
    proc = subprocess.run([sys.executable, "-m", "ktasks.metricsdoc", "--check", "docs/monitoring.md"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
