"""``python -m ktasks``: the same as the ``ktasks`` command.

The CLI is imported only when this runs as the program: a worker's children
are spawned, and each imports the parent's main module (this one, or the
``ktasks`` script, which calls :func:`main` here). Leaving the CLI out of that
import saves each child about 150 ms of its start.
"""

from __future__ import annotations


def main() -> None:
    """Run the ``ktasks`` command line."""
    from .cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
