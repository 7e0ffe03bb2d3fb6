"""Loading the application named by ``-A module[:attr]``, ``KTASKS_APP`` or the project's config.

Shared by every command that takes ``-A`` (``topics``, ``worker``, ``dlq``...).
The app is named, in order of precedence, by ``-A/--app`` on the command line,
the ``KTASKS_APP`` environment variable, or ``app = "module:attr"`` in the
nearest ``ktasks.toml`` or ``pyproject.toml`` (``[tool.ktasks]`` table) found
from the current directory upwards. The name comes from the operator only:
nothing read from a Kafka message ever decides what is imported.
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from ..app import App
from ..errors import KtasksError

__all__ = ["AppLoadError", "load_app", "loaded_app", "app_option", "configured_app", "resolve_app_spec",
           "APP_ENV"]

F = TypeVar("F", bound=Callable[..., Any])

#: Environment variable naming the app when ``-A`` is not given (Celery's is ``CELERY_APP``).
APP_ENV = "KTASKS_APP"

_NO_APP = (f"no app given: pass -A MODULE[:ATTR], set {APP_ENV}=MODULE[:ATTR], or add "
           '[tool.ktasks] app = "MODULE[:ATTR]" to pyproject.toml (or app = "..." to ktasks.toml)')


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


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[import-not-found, no-redef, unused-ignore]
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise AppLoadError(f"{path}: cannot read it: {exc}") from exc


def _table_app(table: Any, where: str) -> str | None:
    """The ``app`` of a ktasks config table; other keys are refused, so a typo is not ignored."""
    if not isinstance(table, dict):
        raise AppLoadError(f"{where} must be a table")
    unknown = sorted(set(table) - {"app"})
    if unknown:
        raise AppLoadError(f"{where}: unknown key {unknown[0]!r} (the only key is 'app'; settings go in "
                           "App(...) or KTASKS_* variables)")
    app = table.get("app")
    if app is not None and (not isinstance(app, str) or not app.strip()):
        raise AppLoadError(f"{where}: app must be a non-empty string like \"tasks:app\"")
    return app


def configured_app(cwd: str | Path | None = None, environ: Mapping[str, str] | None = None
                   ) -> tuple[str, str, Path | None] | None:
    """The app named outside the command line: ``(spec, where it came from, project folder)``, or None.

    ``KTASKS_APP`` first; else the nearest folder, from ``cwd`` up, holding a
    ``ktasks.toml`` with ``app = "..."`` or a ``pyproject.toml`` with a
    ``[tool.ktasks]`` table (``ktasks.toml`` wins in the same folder). The
    project folder is where the module is imported from, as the current
    directory is for ``-A``.
    """
    env = os.environ if environ is None else environ
    spec = env.get(APP_ENV, "").strip()
    if spec:
        return spec, APP_ENV, None
    here = Path(cwd or os.getcwd()).resolve()
    for folder in (here, *here.parents):
        own = folder / "ktasks.toml"
        if own.is_file():
            app = _table_app(_read_toml(own), str(own))
            if app:
                return app.strip(), str(own), folder
        pyproject = folder / "pyproject.toml"
        if pyproject.is_file():
            tool = _read_toml(pyproject).get("tool", {})
            if isinstance(tool, dict) and "ktasks" in tool:
                app = _table_app(tool["ktasks"], f"{pyproject} [tool.ktasks]")
                if app:
                    return app.strip(), f"{pyproject} [tool.ktasks]", folder
    return None


def resolve_app_spec(given: str | None, required: bool = True) -> str | None:
    """``-A``'s value, else the configured app (its project folder goes on ``sys.path``)."""
    if given:
        return given
    found = configured_app()
    if found is None:
        if required:
            raise AppLoadError(_NO_APP)
        return None
    spec, _, folder = found
    if folder is not None and str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    return spec


def _app_callback(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if ctx.resilient_parsing:  # shell completion, --help
        return value
    return resolve_app_spec(value, required=True)


def app_option(func: F) -> F:
    """The ``-A/--app MODULE[:ATTR]`` option; the command receives the string as ``app_spec``.

    Without ``-A``, ``KTASKS_APP`` or the project's config names the app (see the module docstring).
    """
    return click.option(
        "-A", "--app", "app_spec", default=None, metavar="MODULE[:ATTR]", callback=_app_callback,
        help=f"The ktasks App: module:attribute, or a module that defines exactly one App. Default: "
             f"{APP_ENV}, else app in [tool.ktasks] of pyproject.toml or in ktasks.toml.",
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
