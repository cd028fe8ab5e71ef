"""``python -m liverscan`` entry point."""

from liverscan.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
