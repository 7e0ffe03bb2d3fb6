"""Loading the application named by ``-A module[:attr]`` on the command line.

Shared by every command that takes ``-A`` (``topics``, ``worker``, ``dlq``...).
The name comes from the command line only: nothing read from a Kafka message
ever decides what is imported.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import click

from ..app import App
from ..errors import KtasksError

__all__ = ["AppLoadError", "load_app", "loaded_app", "app_option"]

F = TypeVar("F", bound=Callable[..., Any])


class AppLoadError(click.UsageError):
    """``-A`` does not name exactly one ktasks App (shown as a usage error, exit status 2)."""


def load_app(spec: str) -> App:
    """Import ``module`` and return its App: ``module:attr`` names it, ``module`` alone finds it.

    With ``module`` alone the module must hold exactly one :class:`~ktasks.App`
    instance at top level; with none or several, the error names the candidates.
    ``attr`` may be dotted (``module:container.app``). The current directory is
    put on ``sys.path`` first, as ``python -m`` would, so ``-A myproject.tasks``
    works from the project root.
    """
    module_name, _, attr = spec.strip().partition(":")
    if not module_name:
        raise AppLoadError(f"-A {spec!r}: expected module or module:attribute")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        # Only "this module does not exist"; an import failing inside it keeps its traceback.
        if exc.name is None or not (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise
        raise AppLoadError(f"-A {spec!r}: no module named {exc.name!r} (searched from {cwd})") from exc
    if attr:
        obj: Any = module
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise AppLoadError(f"-A {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
        if not isinstance(obj, App):
            raise AppLoadError(f"-A {spec!r}: {attr!r} is a {type(obj).__name__}, not a ktasks App")
        return obj
    found: dict[int, list[str]] = {}
    apps: dict[int, App] = {}
    for name, value in vars(module).items():
        if isinstance(value, App):
            found.setdefault(id(value), []).append(name)
            apps[id(value)] = value
    if len(apps) == 1:
        return next(iter(apps.values()))
    if not apps:
        raise AppLoadError(f"-A {spec!r}: module {module_name!r} defines no ktasks App at top level; "
                           f"name one with -A {module_name}:ATTRIBUTE")
    candidates = ", ".join(f"{module_name}:{names[0]} ({apps[key].name!r})" for key, names in found.items())
    raise AppLoadError(f"-A {spec!r}: module {module_name!r} defines several ktasks Apps; "
                       f"pick one: {candidates}")


def app_option(func: F) -> F:
    """The ``-A/--app MODULE[:ATTR]`` option; the command receives the string as ``app_spec``."""
    return click.option(
        "-A", "--app", "app_spec", required=True, metavar="MODULE[:ATTR]",
        help="The ktasks App: module:attribute, or a module that defines exactly one App.",
    )(func)


@contextmanager
def loaded_app(spec: str) -> Iterator[App]:
    """Load the app for a command; ktasks errors become clean CLI errors; its clients close at the end."""
    app = load_app(spec)
    try:
        yield app
    except KtasksError as exc:
        raise click.ClickException(str(exc)) from exc
    finally:
        app.close()
