"""Generate the CLI reference (``docs/cli.md``) from the click commands themselves.

    python -m ktasks.clidoc docs/cli.md          # write it
    python -m ktasks.clidoc --check docs/cli.md  # exit 1 if it is stale

Walks :data:`ktasks.cli.cli` recursively and renders, for every command, its
usage line, its help text and its options and arguments, in the same words
``ktasks ... --help`` prints, so the reference cannot drift from the code.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import click

__all__ = ["render", "main", "DEFAULT_PATH"]

DEFAULT_PATH = "docs/cli.md"

_INTRO = """\
# CLI reference

<!-- Generated from the click commands by `python -m ktasks.clidoc docs/cli.md`; do not edit. -->

Every command also answers `-h` / `--help` with the same text. Commands that take `-A MODULE[:ATTR]`
import the app from the current directory (as `python -m` would); the app's settings, including
`KTASKS_*` environment variables, apply (see [Configuration](configuration.md)).
"""


def _commands(group: click.Command, ctx: click.Context) -> Iterator[tuple[click.Command, click.Context]]:
    """Depth first, in the order ``--help`` lists them; hidden commands are left out."""
    yield group, ctx
    if isinstance(group, click.Group):
        for name in group.list_commands(ctx):
            sub = group.get_command(ctx, name)
            if sub is None or sub.hidden:
                continue
            yield from _commands(sub, click.Context(sub, info_name=name, parent=ctx, **sub.context_settings))


def _anchor(path: str) -> str:
    return re.sub(r"[^a-z0-9 -]", "", path.lower()).replace(" ", "-")


_CODE_SPAN = re.compile(r"(``.+?``|`[^`]+`)")


def _escape(text: str, in_table: bool = False) -> str:
    """Escape ``<``, ``>`` and ``&`` (and ``|`` in a table cell) outside code spans.

    Click help is plain text, not HTML; inside a code span a ``|`` does not
    split a table cell, and a backslash would show.
    """
    pieces = _CODE_SPAN.split(text)
    for i in range(0, len(pieces), 2):
        piece = pieces[i].replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        pieces[i] = piece.replace("|", "\\|") if in_table else piece
    return "".join(pieces)


def _cell(text: str) -> str:
    return _escape(" ".join(text.split()), in_table=True)


def _help_markdown(text: str) -> str:
    """Click help text as markdown: ``\\f`` cuts it, ``\\b`` paragraphs stay as written (a code block)."""
    text = text.split("\f", 1)[0]
    out: list[str] = []
    for para in re.split(r"\n\s*\n", text.strip()):
        lines = para.splitlines()
        if lines and lines[0].strip() == "\b":
            out.append("```text\n" + "\n".join(lines[1:]) + "\n```")
        else:
            out.append(_escape(" ".join(line.strip() for line in lines)))
    return "\n\n".join(out)


def _options_table(cmd: click.Command, ctx: click.Context) -> list[str]:
    rows: list[tuple[str, str]] = []
    for param in cmd.get_params(ctx):
        if isinstance(param, click.Option):
            if param.name == "help" or ("--help" in param.opts and not param.expose_value):
                # click caches each command's help option from the first context that asked
                # (`--help` alone when a test invoked the command directly), so it is written
                # here as the root group sets it for every command.
                continue
            record = param.get_help_record(ctx)
            if record is None:           # hidden
                continue
            flags, helptext = record
            rows.append((f"`{flags}`", helptext))
        elif isinstance(param, click.Argument):
            metavar = param.make_metavar(ctx) if _takes_ctx(param) else param.make_metavar()  # type: ignore[call-arg]
            rows.append((f"`{metavar}`", "argument" + (", required" if param.required else "")))
    rows.append(("`-h, --help`", "Show this message and exit."))
    lines = ["| Option | Description |", "|---|---|"]
    lines += [f"| {_cell(a)} | {_cell(b)} |" for a, b in rows]
    return lines


def _takes_ctx(param: click.Parameter) -> bool:
    import inspect

    return "ctx" in inspect.signature(param.make_metavar).parameters


def render(root: click.Command | None = None, prog_name: str = "ktasks") -> str:
    """The whole reference, as markdown."""
    if root is None:
        from .cli import cli as root
    assert root is not None
    settings = {"max_content_width": 100, "terminal_width": 100, **root.context_settings}
    top = click.Context(root, info_name=prog_name, **settings)
    entries = list(_commands(root, top))
    parts = [_INTRO]
    parts.append("Commands: " + " · ".join(
        f"[`{ctx.command_path}`](#{_anchor(ctx.command_path)})" for _, ctx in entries[1:]) + "\n")
    for cmd, ctx in entries:
        usage = " ".join([ctx.command_path, *cmd.collect_usage_pieces(ctx)])
        section = [f"## {ctx.command_path}", "", "```text", usage, "```", ""]
        if cmd.help:
            section += [_help_markdown(cmd.help), ""]
        if isinstance(cmd, click.Group):
            subs = [(n, cmd.get_command(ctx, n)) for n in cmd.list_commands(ctx)]
            listed = [(n, c) for n, c in subs if c is not None and not c.hidden]
            if listed:
                section += ["| Command | Summary |", "|---|---|"]
                section += [f"| [`{n}`](#{_anchor(ctx.command_path + ' ' + n)}) | "
                            f"{_cell(c.get_short_help_str(limit=200))} |" for n, c in listed]
                section.append("")
        table = _options_table(cmd, ctx)
        if table:
            section += [*table, ""]
        parts.append("\n".join(section))
    return "\n".join(parts).rstrip() + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ktasks.clidoc", description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", default=DEFAULT_PATH, help=f"output file (default {DEFAULT_PATH})")
    parser.add_argument("--check", action="store_true", help="exit 1 if the file differs from what would be written")
    args = parser.parse_args(argv)
    text = render()
    path = Path(args.path)
    if args.check:
        current = path.read_text() if path.exists() else ""
        if current != text:
            print(f"{path} is out of date: run `python -m ktasks.clidoc {path}`", file=sys.stderr)
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
