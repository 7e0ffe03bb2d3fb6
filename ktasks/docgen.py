"""Generate the configuration reference from :data:`ktasks.settings.SETTINGS`.

    python -m ktasks.docgen docs/configuration.md          # write it
    python -m ktasks.docgen --check docs/configuration.md  # exit 1 if it is stale

The reference lists every setting, grouped as in ``ktasks/settings.py``, with
its environment variable, type, default and description, so the documentation
cannot drift from the code.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

from .settings import KAFKA_PASSTHROUGH, SETTINGS, Setting

__all__ = ["render", "main"]

DEFAULT_PATH = "docs/configuration.md"

_INTRO = """\
# Configuration

<!-- Generated from ktasks/settings.py by `python -m ktasks.docgen docs/configuration.md`; do not edit. -->

Every setting can be given three ways. In order of precedence:

1. a keyword argument: `App("billing", partitions=12)` (or a command-line flag where one exists);
2. an environment variable, `KTASKS_` and the name in upper case: `KTASKS_PARTITIONS=12`;
3. the default below.

Unknown settings and values of the wrong type are rejected with an error naming the setting.
Environment variables are parsed by type: integers and floats as numbers, booleans from
`1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`, lists and dicts as JSON. Units are part of the
names (`_ms`, `_s`).

Kafka client settings are passed to kafka-python: {passthrough} directly, and anything else
through `kafka_options`, whose keys are checked against kafka-python's own settings; each client
(the worker's consumer, the producer, the admin client) gets the keys it accepts, so a consumer-only
option such as `fetch_max_bytes` does not reach the producer.
"""


def _code(text: str) -> str:
    return f"`{text}`" if "`" not in text else f"`` {text} ``"


def _format_default(setting: Setting) -> str:
    value = setting.default
    if value is None:
        return "none"
    if isinstance(value, bool):
        return _code("true" if value else "false")
    if isinstance(value, (dict, list)):
        return _code(json.dumps(value))
    if isinstance(value, str):
        return _code(json.dumps(value))
    return _code(repr(value))


def _format_type(setting: Setting) -> str:
    names: dict[type, str] = {dict: "dict (JSON)", list: "list (JSON)"}
    text = names.get(setting.type, setting.type.__name__)
    if setting.nullable:
        text += " or none"
    if setting.choices is not None:
        choices = [c for c in setting.choices if c is not None]
        text += ": one of " + ", ".join(_code(str(c)) for c in choices)
    return text


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _groups(settings: Iterable[Setting]) -> dict[str, list[Setting]]:
    groups: dict[str, list[Setting]] = {}
    for setting in settings:
        groups.setdefault(setting.group, []).append(setting)
    return groups


def render(settings: Iterable[Setting] | None = None) -> str:
    """The markdown reference for ``settings`` (default: every ktasks setting)."""
    items = list(SETTINGS.values() if settings is None else settings)
    parts = [_INTRO.format(passthrough=", ".join(_code(n) for n in KAFKA_PASSTHROUGH))]
    groups = _groups(items)
    parts.append("Groups: " + " · ".join(f"[{g}](#{g.lower().replace(' ', '-')})" for g in groups) + "\n")
    for group, members in groups.items():
        rows = [f"## {group}\n", "| Setting | Environment variable | Type | Default | Description |",
                "|---|---|---|---|---|"]
        for s in members:
            rows.append("| " + " | ".join(_cell(c) for c in (
                _code(s.name), _code(s.env_var), _format_type(s), _format_default(s), s.doc)) + " |")
        parts.append("\n".join(rows) + "\n")
    return "\n".join(parts)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m ktasks.docgen",
                                     description="Write the ktasks configuration reference.")
    parser.add_argument("path", nargs="?", default=DEFAULT_PATH, help=f"output file (default {DEFAULT_PATH})")
    parser.add_argument("--check", action="store_true",
                        help="do not write; exit 1 if the file is missing or differs from the settings")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    args = _parse(argv)
    path = Path(args.path)
    text = render()
    if args.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current != text:
            why = "missing" if current is None else "stale"
            print(f"{path} is {why}; run: python -m ktasks.docgen {args.path}", file=sys.stderr)
            return 1
        print(f"{path} is up to date")
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    old = path.read_text(encoding="utf-8") if path.exists() else None
    if old == text:
        print(f"{path} already up to date")
    else:
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path} ({len(SETTINGS)} settings)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
