"""``python -m liverscan`` entry point."""

from liverscan.faces.cli import main

if __name__ == "__main__":  # pragma: no cover
    main()
