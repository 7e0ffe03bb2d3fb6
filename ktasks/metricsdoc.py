"""Generate the metrics reference in ``docs/monitoring.md`` from :data:`ktasks.metrics.METRICS`.

    python -m ktasks.metricsdoc docs/monitoring.md          # rewrite the reference block
    python -m ktasks.metricsdoc --check docs/monitoring.md  # exit 1 if it is stale

The reference sits between two marker comments; the rest of the page is
written by hand.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from .metrics import METRICS, QUEUED_BUCKETS_S, RUN_TIME_BUCKETS_S

__all__ = ["render", "splice", "main", "BEGIN", "END"]

DEFAULT_PATH = "docs/monitoring.md"
BEGIN = "<!-- metrics reference: generated from ktasks/metrics.py by `python -m ktasks.metricsdoc`; do not edit -->"
END = "<!-- end of metrics reference -->"


def _buckets(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


def render() -> str:
    """The reference table, with the markers around it."""
    rows = ["| Metric | Type | Labels | Description |", "|---|---|---|---|"]
    for m in METRICS:
        labels = ", ".join(f"`{label}`" for label in m.labels) or "none"
        doc = m.doc.replace("|", "\\|")
        rows.append(f"| `{m.name}` | {m.kind} | {labels} | {doc} |")
    notes = [
        "",
        f"Run-time buckets (seconds): {_buckets(RUN_TIME_BUCKETS_S)}. "
        f"Queued-time buckets (seconds): {_buckets(QUEUED_BUCKETS_S)}. Histograms expose `_bucket`, "
        "`_sum` and `_count` series; counters also a `_created` timestamp.",
    ]
    return "\n".join([BEGIN, *rows, *notes, END])


def splice(page: str, block: str) -> str:
    """``page`` with the text between the markers replaced by ``block``."""
    start = page.find(BEGIN)
    end = page.find(END)
    if start < 0 or end < start:
        raise ValueError("the page has no metrics reference markers")
    return page[:start] + block + page[end + len(END):]


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m ktasks.metricsdoc",
                                     description="Write the metrics reference into the monitoring page.")
    parser.add_argument("path", nargs="?", default=DEFAULT_PATH, help=f"the page (default {DEFAULT_PATH})")
    parser.add_argument("--check", action="store_true", help="do not write; exit 1 if the reference is stale")
    args = parser.parse_args(argv)
    path = Path(args.path)
    if not path.exists():
        print(f"{path} is missing", file=sys.stderr)
        return 1
    page = path.read_text(encoding="utf-8")
    try:
        new = splice(page, render())
    except ValueError as exc:
        print(f"{path}: {exc} ({BEGIN!r} ... {END!r})", file=sys.stderr)
        return 1
    if args.check:
        if new != page:
            print(f"{path} has a stale metrics reference; run: python -m ktasks.metricsdoc {args.path}",
                  file=sys.stderr)
            return 1
        print(f"{path}: metrics reference up to date")
        return 0
    if new != page:
        path.write_text(new, encoding="utf-8")
        print(f"wrote the metrics reference into {path} ({len(METRICS)} metrics)")
    else:
        print(f"{path} already up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
