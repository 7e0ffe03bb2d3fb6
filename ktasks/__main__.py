"""``python -m ktasks``: the same as the ``ktasks`` command."""

from .cli import main

if __name__ == "__main__":
    main()
