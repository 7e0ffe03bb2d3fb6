"""The ``ktasks`` command line: a thin layer over the library.

Each command group lives in its own module and does little beyond parsing
arguments and calling into ktasks; process supervision, broker management and
so on live in their own modules.
"""

from __future__ import annotations

import importlib
import logging

import click

logger = logging.getLogger(__name__)

# Modules that define one click command or group each, named like the command.
_COMMAND_MODULES = ("dev", "topics", "worker", "ledger", "dlq", "inspect", "dashboard", "relay", "revoke",
                    "beat")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="ktasks")
def cli() -> None:
    """ktasks: Celery-style tasks on Apache Kafka."""


def _register() -> None:
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built yet
            raise
        for command in getattr(module, "COMMANDS", ()):
            cli.add_command(command)


_register()


def main() -> None:
    cli(prog_name="ktasks")
