"""examples/monitoring: the Grafana dashboard's queries name only metrics ktasks exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from ktasks.metrics import METRICS

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "monitoring"


def _exposed() -> set[str]:
    names: set[str] = set()
    for m in METRICS:
        if m.kind == "histogram":
            names.update(f"{m.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(m.name)
    return names


def test_every_dashboard_query_uses_exposed_metrics_and_labels():
    dash = json.loads((EXAMPLE / "grafana-dashboard.json").read_text())
    exposed = _exposed()
    labels = {label for m in METRICS for label in m.labels} | {"le", "job", "instance"}
    used: set[str] = set()
    for panel in dash["panels"]:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expr = target["expr"]
            names = set(re.findall(r"\bktasks_[a-z_]+", expr))
            assert names and names <= exposed, (panel["title"], names - exposed)
            used |= names
            for group in re.findall(r"by \(([^)]*)\)", expr):
                assert {g.strip() for g in group.split(",")} <= labels, (panel["title"], group)
    # The panels cover the metrics an operator looks at first.
    for wanted in ("ktasks_tasks_finished_total", "ktasks_task_run_time_seconds_bucket", "ktasks_consumer_lag",
                   "ktasks_task_queued_seconds_bucket", "ktasks_commit_failures_total"):
        assert wanted in used


def test_prometheus_config_scrapes_the_port_the_readme_uses():
    readme = (EXAMPLE / "README.md").read_text()
    config = (EXAMPLE / "prometheus.yml").read_text()
    port = re.search(r"--metrics-port (\d+)", readme).group(1)
    assert f":{port}" in config
